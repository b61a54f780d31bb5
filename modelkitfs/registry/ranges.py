"""Blob ranges over blocking HTTP connections in worker threads.

httpx on the trio thread tops out near 300 MB/s on this kind of machine (measured over loopback,
8 to 16 MiB ranges, 1 to 8 in flight): the event loop's one thread parses every chunk. The
standard library's ``http.client`` reading straight into a preallocated buffer from a worker
thread releases the GIL while it waits and copies: 0.8 GB/s on one stream, 1.2 GB/s over eight
(``curl``: 1.0 GB/s). So the bulk of the bytes, blob range GETs, go this way; manifests, tokens
and everything else stay on httpx. Each worker thread keeps its own connections alive.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field

READ_CHUNK = 1024 * 1024
MAX_REDIRECTS = 5
MAX_ERROR_BODY = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)


@dataclass
class RangeResult:
    status: int
    url: str  # where the bytes finally came from (after redirects)
    data: list[bytearray] = field(default_factory=list)  # the body, in pieces
    challenge: str = ""  # WWW-Authenticate of a 401
    retry_after: str = ""
    broken: str = ""  # why the body stopped short of the range, after ``data``


class RangeFetcher:
    def __init__(self, context: ssl.SSLContext, timeout: float) -> None:
        """``timeout``: how long a connection may stay silent before it counts as failed."""
        self.context = context
        self.timeout = timeout
        self._local = threading.local()

    def fetch(
        self, url: str, headers: dict[str, str], start: int, end: int, piece: int
    ) -> RangeResult:
        """GET ``[start, end)`` of ``url``, following redirects (the registry's headers go only
        to the same host; elsewhere only ``Range``), read into buffers of ``piece`` bytes
        (the last one shorter). Blocking: call from a worker thread. Raises OSError or
        ``http.client.HTTPException`` when the connection fails."""
        for _ in range(MAX_REDIRECTS + 1):
            response, connection = self._get(url, headers)
            if response.status in REDIRECTS and (location := response.getheader("Location")):
                response.read()
                target = urllib.parse.urljoin(url, location)
                if _origin(target) != _origin(url):
                    headers = {k: v for k, v in headers.items() if k.lower() == "range"}
                url = target
                continue
            if response.status == 206:
                if (served := response.getheader("Content-Range", "")) and not served.startswith(
                    f"bytes {start}-"
                ):
                    self._discard(url, connection)
                    return RangeResult(206, url, broken=f"it answered another range ({served})")
                data, broken = _read_exactly(response, end - start, piece)
                if broken or response.length:
                    self._discard(url, connection)
                return RangeResult(206, url, data, broken=broken)
            if response.status == 200:  # the server ignored Range: skip to it, then hang up
                try:
                    _skip(response, start)
                    data, broken = _read_exactly(response, end - start, piece)
                finally:
                    self._discard(url, connection)
                return RangeResult(200, url, data, broken=broken)
            response.read(MAX_ERROR_BODY)
            if not response.isclosed():
                connection.close()
            return RangeResult(
                response.status,
                url,
                challenge=response.getheader("WWW-Authenticate") or "",
                retry_after=response.getheader("Retry-After") or "",
            )
        raise http.client.HTTPException(f"more than {MAX_REDIRECTS} redirects from {url}")

    def _get(
        self, url: str, headers: dict[str, str]
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in range(2):
            connection, reused = self._connection(parts)
            try:
                connection.request("GET", target, headers=headers)
                return connection.getresponse(), connection
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._discard(url, connection)
                if not reused or attempt == 1:
                    raise  # a kept-alive connection the server had closed: try a new one once
        raise AssertionError("unreachable")

    def _discard(self, url: str, connection: http.client.HTTPConnection) -> None:
        """Close a connection whose state is unknown (a body not read to its end)."""
        connection.close()
        if self._pool().get(_origin(url)) is connection:
            del self._pool()[_origin(url)]

    def _pool(self) -> dict[str, http.client.HTTPConnection]:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def _connection(
        self, parts: urllib.parse.SplitResult
    ) -> tuple[http.client.HTTPConnection, bool]:
        pool = self._pool()
        origin = f"{parts.scheme}://{parts.netloc}"
        connection = pool.get(origin)
        if connection is not None and connection.sock is not None:
            return connection, True
        host, port = parts.hostname or "", parts.port
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=self.context
            )
        else:
            connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
        connection.connect()
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pool[origin] = connection
        return connection, False


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _read_exactly(
    response: http.client.HTTPResponse, length: int, piece: int
) -> tuple[list[bytearray], str]:
    """Up to ``length`` bytes of the body in buffers of ``piece`` bytes, and why it stopped
    short ("" when it did not): a transfer cut in the middle keeps what arrived, so that it can
    resume from there. Read straight into the buffers its consumer keeps (cache blocks): one
    copy of each byte fewer than slicing one buffer, and memory is freed block by block."""
    pieces: list[bytearray] = []
    done = 0
    while done < length:
        buffer = bytearray(min(piece, length - done))
        filled, failure = _fill(response, buffer)
        done += filled
        if filled:
            del buffer[filled:]
            pieces.append(buffer)
        if failure is not None:
            if failure:
                return pieces, f"the connection failed after {done} of {length} bytes ({failure})"
            return pieces, f"the response ended after {done} of {length} bytes"
    return pieces, ""


def _fill(response: http.client.HTTPResponse, buffer: bytearray) -> tuple[int, str | None]:
    """How many bytes of the body went into ``buffer``, and, when it is not full, why: "" for
    the end of the body, else what failed."""
    filled = 0
    with memoryview(buffer) as view:
        try:
            while filled < len(buffer):
                got = response.readinto(view[filled:])
                if not got:
                    return filled, ""
                filled += got
        except (OSError, http.client.HTTPException) as exc:
            return filled, _why(exc)
    return filled, None


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no data within the timeout"
    if isinstance(exc, http.client.IncompleteRead):
        return "closed by the server"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _skip(response: http.client.HTTPResponse, count: int) -> None:
    scratch = bytearray(min(count, READ_CHUNK) or 1)
    while count > 0:
        got = response.readinto(memoryview(scratch)[: min(count, len(scratch))])
        if not got:
            return
        count -= got
