"""When a registry cannot be reached through a proxy, the proxy may be what is down: the
transport sees one refused connection either way, and would blame (and retry) the registry. A
connection to the proxy itself tells the two apart: made before the command starts for
``--proxy``, after it failed for a proxy from the environment (which $NO_PROXY may skip)."""

from __future__ import annotations

import os
import socket

import httpx

from modelkitfs.errors import GaveUp, ModelKitFSError, Unreachable
from modelkitfs.reference import DEFAULT_REGISTRY, parse_reference

PROBE_TIMEOUT = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")


def check_proxy(proxy: str | None, reference: str) -> None:
    """Refuse a ``--proxy`` that takes no connections, when ``reference`` names a registry
    (a kit in an OCI layout or kit's local storage needs no proxy)."""
    if not proxy:
        return
    try:
        ref = parse_reference(reference)
    except ModelKitFSError:
        return  # said when the command parses it
    if ref.is_layout or ref.registry == DEFAULT_REGISTRY:
        return
    problem = _unreachable(proxy)
    if problem is not None:
        raise problem


def blame_the_proxy(exc: BaseException, proxy: str | None) -> BaseException:
    """``exc``, or an error naming the proxy when the registry was unreachable and the proxy
    (``--proxy``, else the environment's) does not take connections."""
    unreachable = isinstance(exc, Unreachable) or (
        isinstance(exc, GaveUp) and isinstance(exc.last, Unreachable)
    )
    proxy = proxy or next((os.environ[v] for v in PROXY_VARIABLES if os.environ.get(v)), None)
    if not unreachable or not proxy:
        return exc
    return _unreachable(proxy) or exc


def _unreachable(proxy: str) -> ModelKitFSError | None:
    """The error to show when the proxy takes no connections, else None."""
    try:
        url = httpx.URL(proxy)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    port = url.port or (443 if url.scheme == "https" else 1080 if "socks" in url.scheme else 80)
    where = f"{url.host}:{port}"
    try:
        socket.create_connection((url.host, port), timeout=PROBE_TIMEOUT).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        return ModelKitFSError(
            f"cannot reach proxy {where} ({reason.lower()}): check --proxy (or $HTTPS_PROXY) "
            "and that the proxy is running"
        )
    return None
