"""When a registry cannot be reached through a proxy, the proxy may be what is down: the
transport sees one refused connection either way. Asked once the command has failed, a
connection to the proxy itself tells the two apart, so the message names the right one."""

from __future__ import annotations

import os
import socket

import httpx

from modelkitfs.errors import GaveUp, ModelKitFSError, Unreachable

PROBE_TIMEOUT = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")


def blame_the_proxy(exc: BaseException, proxy: str | None) -> BaseException:
    """``exc``, or an error naming the proxy when the registry was unreachable and the proxy
    (``--proxy``, else the environment's) does not take connections."""
    unreachable = isinstance(exc, Unreachable) or (
        isinstance(exc, GaveUp) and isinstance(exc.last, Unreachable)
    )
    proxy = proxy or next((os.environ[v] for v in PROXY_VARIABLES if os.environ.get(v)), None)
    if not unreachable or not proxy:
        return exc
    try:
        url = httpx.URL(proxy)
    except (httpx.InvalidURL, TypeError, ValueError):
        return exc
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
    return exc
