"""Blob ranges over blocking HTTP connections in worker threads.

httpx on the trio thread is bound by the event loop's one thread parsing every chunk (README,
Speed). The standard library's ``http.client`` reading straight into a
preallocated buffer from a worker thread releases the GIL while it waits and copies, so the bulk
of the bytes, blob range GETs, go this way; manifests, tokens and everything else stay on httpx.
Each worker thread keeps its own connections alive.

Two rules keep one bad response from spoiling the next request:

- **Connection discipline.** A connection goes back to the thread's pool only when its response
  was read to its end and framed by ``Content-Length``. An exception while sending, waiting for
  the headers or reading the body, a chunked or close-delimited body, a body left unread: the
  connection is closed. A retry therefore always starts on a clean connection.
- **A deadline per transfer.** The socket timeout bounds each ``recv``, not the transfer: a
  server trickling a byte a second would hold a thread for days. Each call carries a
  :class:`Transfer` whose deadline the event loop enforces by shutting the socket down; the
  thread then reports what arrived, so that the caller resumes from there on a new connection.

A server that ignores ``Range`` answers 200 with the whole blob. Rather than drop the rest
of such an answer, it is **kept open** (up to ``MAX_KEPT`` of them, the oldest closed first),
and a later request of the same URL starting where it stands, or after, carries on reading it
instead of asking for the blob from its start once more: a blob read in order then crosses
the network once. A range from the start is read and the answer kept where the range ended; a
range further in is not skipped to (that would cost the blob up to it, for one range): the
answer is kept at the start, and the result says so (``WHOLE_BLOB_KEPT``), so that the caller
reads the blob in order from there.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass

from modelkitfs.primitives.buffers import aligned
from modelkitfs.registry.network import MAX_ERROR_BODY
from modelkitfs.registry.ranges.exchange import (
    DEADLINE,
    LONGER,
    WHOLE_BLOB_KEPT,
    RangeRequest,
    RangeResult,
    classify,
)
from modelkitfs.registry.redirects import origin

READ_CHUNK = 1024 * 1024
MAX_KEPT = 8  # whole-blob answers kept open to carry on reading
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Transfer:
    """One call's deadline, shared between the event loop, which calls :meth:`abort` when it
    passes, and the worker thread, which registers the socket it is using."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self.aborted = False
        self.finished = False

    def use(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._socket = sock
            if self.aborted:
                raise TimeoutError("the transfer's deadline passed")

    def finish(self) -> bool:
        """Mark the transfer done; False when it was aborted first."""
        with self._lock:
            self.finished = True
            return not self.aborted

    def abort(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.aborted = True
            if self._socket is not None:
                with contextlib.suppress(OSError):  # already closed
                    self._socket.shutdown(socket.SHUT_RDWR)


@dataclass
class _Kept:
    """A whole-blob answer kept open, read up to ``position`` of the blob."""

    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse
    position: int


class RangeFetcher:
    def __init__(self, context: ssl.SSLContext, timeout: float) -> None:
        """``timeout``: how long a connection may stay silent before it counts as failed."""
        self.context = context
        self.timeout = timeout
        self._local = threading.local()
        self._kept: dict[str, _Kept] = {}  # by URL, oldest first
        self._kept_lock = threading.Lock()

    def fetch(self, request: RangeRequest, transfer: Transfer | None = None) -> RangeResult:
        """GET the range of ``request``, read into buffers of ``request.piece`` bytes (the last
        one shorter), each handed to ``request.deliver`` (in this thread) once full. A redirect
        is not followed: its ``location`` is returned, for the caller to decide what goes there.
        Blocking: call from a worker thread. Raises OSError or ``http.client.HTTPException``
        when the connection fails before the body."""
        transfer = transfer or Transfer()
        url = request.url
        kept = self._take_kept(url, request.start)
        if kept is not None:
            return self._carry_on(kept, request, transfer)
        response, connection = self._get(request, transfer)
        if (
            response.status == 200
            and request.start > 0
            and self._keep(url, connection, response, 0, transfer)
        ):
            return RangeResult(200, url, problem=WHOLE_BLOB_KEPT)
        try:
            result = self._answer(response, request, transfer)
        except BaseException:
            self._discard(url, connection)
            raise
        clean = not (result.broken or result.problem)
        if (
            clean
            and result.status == 200
            and self._keep(url, connection, response, request.end, transfer)
        ):
            return result
        if not (clean and _read_to_end(response) and transfer.finish()):
            self._discard(url, connection)
        return result

    def _carry_on(self, kept: _Kept, request: RangeRequest, transfer: Transfer) -> RangeResult:
        """The range of ``request`` from a whole-blob answer kept open before its start."""
        try:
            transfer.use(kept.connection.sock)
            _skip(kept.response, request.start - kept.position, transfer)
            delivered, broken = _read_exactly(kept.response, request, transfer)
        except BaseException:
            kept.connection.close()
            raise
        result = RangeResult(200, request.url, delivered, broken=broken)
        if broken or not self._keep(
            request.url, kept.connection, kept.response, request.end, transfer
        ):
            kept.connection.close()  # at its end, or broken: never pooled again
        return result

    def _take_kept(self, url: str, start: int) -> _Kept | None:
        """The whole-blob answer of ``url`` kept open at or before ``start``, if any."""
        with self._kept_lock:
            kept = self._kept.get(url)
            if kept is None or kept.position > start:
                return None
            del self._kept[url]
            return kept

    def _keep(
        self,
        url: str,
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        position: int,
        transfer: Transfer,
    ) -> bool:
        """Keep a whole-blob answer read up to ``position`` open, if more of it is left and
        its length is known; False when it is not kept."""
        if response.chunked or not response.length or not transfer.finish():
            return False
        if self._pool().get(origin(url)) is connection:
            del self._pool()[origin(url)]  # no other request may use it meanwhile
        with self._kept_lock:
            if (replaced := self._kept.pop(url, None)) is not None:
                replaced.connection.close()
            self._kept[url] = _Kept(connection, response, position)
            while len(self._kept) > MAX_KEPT:
                oldest = next(iter(self._kept))
                self._kept.pop(oldest).connection.close()
        return True

    def close(self) -> None:
        """Close the answers kept open (a thread's pooled connections close with it)."""
        with self._kept_lock:
            for kept in self._kept.values():
                kept.connection.close()
            self._kept.clear()

    def _answer(
        self, response: http.client.HTTPResponse, request: RangeRequest, transfer: Transfer
    ) -> RangeResult:
        """The response, read as far as it is of use."""
        answer = classify(request, response.status, response.getheader)
        if isinstance(answer, RangeResult):
            if not answer.problem:
                response.read(MAX_ERROR_BODY)
            return answer
        _skip(response, answer.skip, transfer)
        delivered, broken = _read_exactly(response, request, transfer, strict=answer.strict)
        return answer.result(request, delivered, broken)

    def _get(
        self, request: RangeRequest, transfer: Transfer
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        parts = urllib.parse.urlsplit(request.url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in range(2):
            connection, reused = self._connection(parts)
            try:
                transfer.use(connection.sock)
                connection.request("GET", target, headers=request.headers)
                return connection.getresponse(), connection
            except STALE:
                self._discard(request.url, connection)
                if not reused or attempt == 1 or transfer.aborted:
                    raise  # a kept-alive connection the server had closed: try a new one once
            except BaseException:
                self._discard(request.url, connection)
                raise
        raise AssertionError("unreachable")

    def _discard(self, url: str, connection: http.client.HTTPConnection) -> None:
        """Close a connection whose state is unknown."""
        connection.close()
        if self._pool().get(origin(url)) is connection:
            del self._pool()[origin(url)]

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


def _read_to_end(response: http.client.HTTPResponse) -> bool:
    """Whether the connection may serve another request: the body was read to its end, and
    ``Content-Length`` framed it (a chunked body's trailer, a body ended by closing, cannot be
    trusted to have left the connection clean)."""
    return (
        response.isclosed()
        and not response.chunked
        and response.getheader("Content-Length") is not None
        and not response.will_close
    )


def _read_exactly(
    response: http.client.HTTPResponse,
    request: RangeRequest,
    transfer: Transfer,
    *,
    strict: bool = False,
) -> tuple[int, str]:
    """Up to the range's length of the body in buffers of ``request.piece`` bytes (the last
    one shorter), each handed to ``request.deliver`` once full; how many bytes went, and why it
    stopped short ("" when it did not; ``LONGER`` when ``strict`` and the body goes on past the
    range). Read straight into the buffers their consumer keeps (cache blocks): no copy, and a
    block is on its way to the cache while the rest of the range arrives, so that a request's
    size does not set the memory it holds. A buffer a cut transfer left part filled is dropped:
    resuming after the last whole one keeps the pieces cut where they were."""
    done, length = 0, request.length
    while done < length:
        size = min(request.piece, length - done)
        buffer = aligned(size, zeroed=False)  # by direct I/O to the cache; handed on only full
        filled, failure = _fill(response, buffer, transfer)
        if failure is not None:
            if failure:
                return done, (
                    f"the connection failed after {done + filled} of {length} bytes ({failure})"
                )
            return done, f"the response ended after {done + filled} of {length} bytes"
        if strict and done + size == length and response.read(1):
            return done, LONGER
        request.deliver(buffer)
        done += size
    return done, ""


def _fill(
    response: http.client.HTTPResponse, buffer: memoryview, transfer: Transfer
) -> tuple[int, str | None]:
    """How many bytes of the body went into ``buffer``, and, when it is not full, why: "" for
    the end of the body, else what failed."""
    filled = 0
    with memoryview(buffer) as view:
        try:
            while filled < len(buffer):
                got = response.readinto(view[filled:])
                if transfer.aborted:
                    return filled, DEADLINE
                if not got:
                    return filled, ""
                filled += got
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if transfer.aborted:
                return filled, DEADLINE
            return filled, _why(exc)
    return filled, None


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no data within the timeout"
    if isinstance(exc, http.client.IncompleteRead):
        return "closed by the server"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _skip(response: http.client.HTTPResponse, count: int, transfer: Transfer) -> None:
    scratch = bytearray(min(count, READ_CHUNK) or 1)
    while count > 0 and not transfer.aborted:
        got = response.readinto(memoryview(scratch)[: min(count, len(scratch))])
        if not got:
            return
        count -= got
