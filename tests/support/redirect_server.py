"""A registry that sends blob downloads elsewhere, as registries backed by object storage do.

``RedirectingProxy`` forwards everything to a real registry except
``GET /v2/<repo>/blobs/<digest>``, which it answers with a redirect to a presigned-style URL on a
second server at 127.0.0.2 (another host, so clients must not send their registry credentials
there). The proxy first checks the
client may read the blob by forwarding the request as a HEAD with the client's own headers; an
error status is relayed as the registry's answer. The URL's ``sig`` stands for that check: the
object store fetches the bytes from the registry with the Authorization the redirected request
carried, so it works in front of any auth scheme and never needs credentials of its own.
Request bodies (pushes through the proxy) need a Content-Length.

It runs in threads of the test process: a test that blocks holding the GIL while the daemon
reads a blob (safetensors faulting in pages of a mounted file) would deadlock against it.
"""

from __future__ import annotations

import http.client
import re
import secrets
import sys
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from tests.support.threaded_servers import LoopbackHTTPServer, ServedInThreads

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
BLOB_PATH = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>[a-z0-9+._-]+:[a-zA-Z0-9=_-]+)$")
RELAYED_BLOB_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "ETag")


@dataclass(frozen=True)
class Grant:
    repo: str
    digest: str
    authorization: str | None


class RedirectingProxy(ServedInThreads):
    """A forwarding proxy on 127.0.0.1 in front of ``upstream`` (plain-HTTP ``host:port``).

    Plain attributes, changeable while it runs: ``status`` of the redirect (307 or 302),
    ``honour_range`` (False: the object store ignores Range and sends the whole blob with 200),
    ``reject_authorization`` (True: the object store answers 400 to a request with an
    Authorization header, as S3 does to a presigned URL).

    Counters, under ``lock``: ``redirects`` issued, ``blob_requests`` and ``blob_bytes`` at the
    object store, ``authorizations_seen`` (every Authorization header the object store received)
    and ``ranges_seen`` (its requests' Range headers, None when absent).
    """

    def __init__(
        self,
        upstream: str,
        *,
        status: int = 307,
        honour_range: bool = True,
        reject_authorization: bool = False,
    ) -> None:
        self.upstream = upstream
        self.status = status
        self.honour_range = honour_range
        self.reject_authorization = reject_authorization
        self.lock = threading.Lock()
        self.redirects = 0
        self.blob_requests = 0
        self.blob_bytes = 0
        self.authorizations_seen: list[str] = []
        self.ranges_seen: list[str | None] = []
        self._grants: dict[str, Grant] = {}
        proxy = _Server(("127.0.0.1", 0), _ProxyHandler, self)
        store = _Server(("127.0.0.2", 0), _StoreHandler, self)
        self.address = f"127.0.0.1:{proxy.server_address[1]}"
        self.store_address = f"127.0.0.2:{store.server_address[1]}"
        self._serve(proxy, store)

    def expire_urls(self) -> None:
        """Make every URL issued so far answer 403, like a presigned URL past its expiry."""
        with self.lock:
            self._grants.clear()

    def reset(self) -> None:
        """Zero the counters (issued URLs stay valid)."""
        with self.lock:
            self.redirects = self.blob_requests = self.blob_bytes = 0
            self.authorizations_seen.clear()
            self.ranges_seen.clear()

    def sign(self, repo: str, digest: str, authorization: str | None) -> str:
        """A fresh object-store URL for the blob, counted as a redirect."""
        sig = secrets.token_urlsafe(16)
        with self.lock:
            self._grants[sig] = Grant(repo, digest, authorization)
            self.redirects += 1
        query = urllib.parse.urlencode({"repo": repo, "sig": sig})
        return f"http://{self.store_address}/blobs/{digest}?{query}"

    def grant(self, sig: str) -> Grant | None:
        with self.lock:
            return self._grants.get(sig)


class _Server(LoopbackHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hanging up mid-response are routine here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: object
    ) -> None:
        self.owner = owner
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    @property
    def owner(self) -> RedirectingProxy:
        return self.server.owner  # type: ignore[return-value]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def upstream(self) -> http.client.HTTPConnection:
        host, port = self.owner.upstream.rsplit(":", 1)
        return http.client.HTTPConnection(host, int(port), timeout=60)

    def relay(self, response: http.client.HTTPResponse, headers: list[tuple[str, str]]) -> int:
        """Send ``response``'s status, ``headers`` and body; returns the body bytes sent."""
        self.send_response(response.status)
        for key, value in headers:
            self.send_header(key, value)
        if response.getheader("Content-Length") is None and self.command != "HEAD":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        sent = 0
        try:
            while chunk := response.read(1 << 20):
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return sent

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _ProxyHandler(_Handler):
    def do_GET(self) -> None:
        match = BLOB_PATH.match(self.path)
        if match and self._readable():
            location = self.owner.sign(
                match["repo"], match["digest"], self.headers.get("Authorization")
            )
            self.reply(self.owner.status, headers={"Location": location})
        else:
            self._forward()

    def _readable(self) -> bool:
        """Whether the registry would serve this blob to this client."""
        connection = self.upstream()
        try:
            connection.request("HEAD", self.path, headers=self._headers())
            return connection.getresponse().status in (200, 206)  # 206: a HEAD with Range
        finally:
            connection.close()

    def _headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        connection = self.upstream()
        try:
            connection.request(self.command, self.path, body=body, headers=self._headers())
            response = connection.getresponse()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_HEADERS]
            self.relay(response, headers)
        finally:
            connection.close()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


class _StoreHandler(_Handler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        authorization = self.headers.get("Authorization")
        range_ = self.headers.get("Range")
        with self.owner.lock:
            self.owner.blob_requests += 1
            self.owner.ranges_seen.append(range_)
            if authorization is not None:
                self.owner.authorizations_seen.append(authorization)
        grant = self.owner.grant(query.get("sig", ""))
        digest = url.path.removeprefix("/blobs/")
        if authorization is not None and self.owner.reject_authorization:
            self.reply(400, b"<Error><Code>InvalidArgument</Code></Error>")
        elif grant is None or (grant.repo, grant.digest) != (query.get("repo"), digest):
            self.reply(403, b"<Error><Code>AccessDenied</Code></Error>")
        else:
            self._serve(grant, range_ if self.owner.honour_range else None)

    do_HEAD = do_GET

    def _serve(self, grant: Grant, range_: str | None) -> None:
        headers = {"Authorization": grant.authorization, "Range": range_}
        connection = self.upstream()
        try:
            connection.request(
                self.command,
                f"/v2/{grant.repo}/blobs/{grant.digest}",
                headers={k: v for k, v in headers.items() if v is not None},
            )
            response = connection.getresponse()
            if response.status in (401, 403):
                self.reply(403, b"<Error><Code>AccessDenied</Code></Error>")
                return
            relayed = [(k, response.getheader(k)) for k in RELAYED_BLOB_HEADERS]
            if self.owner.honour_range:
                relayed.append(("Accept-Ranges", "bytes"))
            sent = self.relay(response, [(k, v) for k, v in relayed if v is not None])
            with self.owner.lock:
                self.owner.blob_bytes += sent
        finally:
            connection.close()
