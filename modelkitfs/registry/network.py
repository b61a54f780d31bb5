"""How we reach registries: TLS, proxies, mirrors, as kit's network flags set them.

TLS verifies against the system's CA store (as kit does, not a bundled one), plus
``--tls-cert``; ``--cert``/``--key`` (or ``$KITOPS_CLIENT_CERT``/``$KITOPS_CLIENT_KEY``) present a
client certificate. Proxies come from ``--proxy`` or the usual ``HTTPS_PROXY``/``NO_PROXY``.

A body that is not blob data is bounded, so that a broken or hostile server cannot make the
daemon hold gigabytes: an error, redirect or token body is read up to :data:`MAX_ERROR_BODY`
(a document up to :data:`~modelkitfs.registry.documents.MAX_DOCUMENT_SIZE`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
from dataclasses import dataclass, field

import httpx

from modelkitfs.errors import RegistryError, TransientError, Unreachable

DEFAULT_TIMEOUT = 60.0
MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True)
class NetworkOptions:
    plain_http: bool = False
    tls_verify: bool = True
    tls_cert: str | None = None  # an extra CA bundle (PEM)
    client_cert: str | None = None
    client_key: str | None = None
    proxy: str | None = None
    mirrors: tuple[str, ...] = field(default_factory=tuple)  # tried in order before the origin
    timeout: float = DEFAULT_TIMEOUT  # seconds a request may take, retries included

    @property
    def stall_timeout(self) -> float:
        """How long a connection may stay silent before it is given up and tried again: a
        fraction of the timeout, so that a stalled transfer still has time to resume."""
        return min(max(self.timeout / 4, 1.0), 30.0)

    def with_environment(self) -> NetworkOptions:
        """Fill the client certificate from kit's environment variables when not given."""
        return dataclasses.replace(
            self,
            client_cert=self.client_cert or os.environ.get("KITOPS_CLIENT_CERT") or None,
            client_key=self.client_key or os.environ.get("KITOPS_CLIENT_KEY") or None,
        )


def ssl_context(options: NetworkOptions) -> ssl.SSLContext | bool:
    """The TLS settings for httpx; files that cannot be read are a clear error, up front."""
    if not options.tls_verify and not options.client_cert:
        return False
    context = ssl.create_default_context()
    if not options.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.tls_cert:
        try:
            context.load_verify_locations(cafile=options.tls_cert)
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(
                f"cannot use --tls-cert {options.tls_cert} ({_reason(exc)}): give a PEM file "
                "with the CA certificate(s) that signed the registry's certificate"
            ) from None
    if options.client_cert or options.client_key:
        if not (options.client_cert and options.client_key):
            raise RegistryError("a client certificate needs both --cert and --key")
        try:
            context.load_cert_chain(options.client_cert, options.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(
                f"cannot use client certificate {options.client_cert} with key "
                f"{options.client_key} ({_reason(exc)}): give PEM files of a matching pair"
            ) from None
    return context


def blocking_ssl_context(options: NetworkOptions) -> ssl.SSLContext:
    """The same TLS settings as an ``ssl.SSLContext`` for ``http.client``."""
    context = ssl_context(options)
    if context is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    assert isinstance(context, ssl.SSLContext)
    return context


def uses_proxy(options: NetworkOptions) -> bool:
    """Whether requests may go through a proxy (``--proxy`` or the environment's)."""
    return bool(options.proxy) or any(
        os.environ.get(name)
        for name in (
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        )
    )


def endpoint_url(endpoint: str, plain_http: bool) -> str:
    """``host[:port]`` or a full ``http(s)://`` URL as the base URL of a registry."""
    if "://" in endpoint:
        return endpoint.rstrip("/")
    return f"{'http' if plain_http else 'https'}://{endpoint}"


def make_http_client(
    options: NetworkOptions,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The client for documents and tokens; ``transport`` replaces the network (tests give
    ``httpx.MockTransport``)."""
    return httpx.AsyncClient(
        transport=transport,
        verify=ssl_context(options),
        proxy=options.proxy,
        timeout=httpx.Timeout(options.stall_timeout, connect=min(10.0, options.stall_timeout)),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        follow_redirects=False,
        headers={"User-Agent": "modelkitfs"},
    )


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)


def describe_failure(host: str, exc: BaseException, plain_http: bool) -> str:
    """One line saying why ``host`` could not be reached and what to do about it."""
    chain = _chain(exc)
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        reason = next(
            (e.verify_message for e in chain if isinstance(e, ssl.SSLCertVerificationError)),
            "unknown",
        )
        return (
            f"the TLS certificate of {host} is not trusted ({reason}): pass --tls-cert CA.pem "
            "with the CA that signed it, or --tls-verify=false to skip the check (insecure)"
        )
    if any(getattr(e, "reason", None) in _CLIENT_CERT_ALERTS for e in chain):
        return (
            f"{host} refused the TLS handshake without an acceptable client certificate: pass "
            "--cert and --key (or set KITOPS_CLIENT_CERT and KITOPS_CLIENT_KEY) with one its CA "
            "trusts"
        )
    if any(isinstance(e, ssl.SSLError) for e in chain) and not plain_http:
        return (
            f"TLS with {host} failed ({describe(exc)}): if it serves plain HTTP, pass --plain-http"
        )
    if _unknown_host(chain):
        return (
            f"cannot reach registry {host}: unknown host {host.rsplit(':', 1)[0]}; check the "
            "registry name"
        )
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return (
            f"cannot reach registry {host}: connection refused; check the address and port, "
            "and that the registry is running"
        )
    return (
        f"cannot reach registry {host}: {describe(exc)}; check the address, and your network "
        "or proxy"
    )


def transport_failure(host: str, exc: BaseException, plain_http: bool) -> RegistryError:
    """A failed connection as a typed error: final when no retry can help (a certificate that
    is not trusted, TLS against a plain-HTTP server, a host name that does not exist),
    :class:`Unreachable` when no connection was made, else :class:`TransientError`."""
    message = describe_failure(host, exc, plain_http)
    chain = _chain(exc)
    if any(isinstance(e, ssl.SSLError) for e in chain) or _unknown_host(chain):
        return RegistryError(message)
    connecting = (ConnectionRefusedError, socket.gaierror, httpx.ConnectError, httpx.ConnectTimeout)
    if any(isinstance(e, connecting) for e in chain):
        return Unreachable(message)
    return TransientError(message)


def _unknown_host(chain: list[BaseException]) -> bool:
    """Whether name resolution said the host does not exist (not that it failed for now):
    both transports keep the resolver's ``gaierror`` in the chain."""
    return any(isinstance(e, socket.gaierror) and e.errno in _NO_SUCH_HOST for e in chain)


_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
# The alerts a server sends when it wants a client certificate it did not get, or refuses ours.
_CLIENT_CERT_ALERTS = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE"}


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes, and the members of any exception group among them."""
    chain: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if current in chain:
            continue
        chain.append(current)
        pending += list(getattr(current, "exceptions", ()))
        if (cause := current.__cause__ or current.__context__) is not None:
            pending.append(cause)
    return chain


def describe(exc: BaseException) -> str:
    """The most telling message along the exception's causes."""
    for error in _chain(exc):
        if text := str(error).strip():
            return text.splitlines()[0]
    return type(exc).__name__
