"""The two ways blob ranges travel, behind one interface.

:class:`RangeTransport` is what the client asks for a range: one request, no redirects
followed, no retries, bounded by a deadline, answered with a
:class:`~modelkitfs.registry.ranges.RangeResult` or a typed error
(:class:`~modelkitfs.errors.Unreachable`, :class:`~modelkitfs.errors.TransientError`, or a
final :class:`~modelkitfs.errors.RegistryError` for TLS that cannot work). Both transports check
a 206 the same way (:mod:`modelkitfs.registry.partial`), keep what arrived of a transfer cut
short, and never read more of a body than the range or a bounded error body.

- :class:`ThreadedRanges`: blocking ``http.client`` connections in worker threads, the fast
  path (see :mod:`modelkitfs.registry.ranges`); the deadline is enforced from the event loop,
  which also aborts the transfer when its caller is cancelled. Pieces cross to the event loop
  with ``run_sync_soon``, which runs them in order and before the thread's result, a wake-up
  per burst.
- :class:`HttpxRanges`: httpx on the event loop, used when a proxy is in play (httpx speaks to
  proxies; ``http.client`` as used here does not).
"""

from __future__ import annotations

import collections
import http.client
import threading
from typing import Protocol

import httpx
import trio

from modelkitfs.buffers import aligned
from modelkitfs.errors import TransientError
from modelkitfs.registry.partial import MAX_ERROR_BODY, range_problem
from modelkitfs.registry.ranges import (
    LONGER,
    REDIRECTS,
    Deliver,
    RangeFetcher,
    RangeResult,
    Transfer,
)
from modelkitfs.registry.transport import transport_failure

DEADLINE = "not done within its deadline"


class RangeTransport(Protocol):
    async def get(
        self,
        url: str,
        headers: dict[str, str],
        start: int,
        end: int,
        piece: int,
        deadline: float,
        deliver: Deliver,
    ) -> RangeResult:
        """One GET of bytes ``[start, end)`` of ``url``: each buffer of ``piece`` bytes (the
        last one shorter) goes to ``deliver``, on the event loop, once it has arrived, in order;
        given up at trio time ``deadline`` (``delivered`` says how far it got, ``broken``
        why)."""
        ...

    async def aclose(self) -> None: ...


class ThreadedRanges:
    def __init__(self, fetcher: RangeFetcher, threads: trio.CapacityLimiter, plain_http: bool):
        self._fetcher = fetcher
        self._threads = threads
        self._plain_http = plain_http

    async def get(
        self,
        url: str,
        headers: dict[str, str],
        start: int,
        end: int,
        piece: int,
        deadline: float,
        deliver: Deliver,
    ) -> RangeResult:
        transfer = Transfer()
        failure: BaseException | None = None
        across = _Across(deliver)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_abort_at, deadline, transfer)
            try:
                result = await trio.to_thread.run_sync(
                    self._fetcher.fetch,
                    url,
                    headers,
                    start,
                    end,
                    piece,
                    across,
                    transfer,
                    limiter=self._threads,
                )
            except (OSError, http.client.HTTPException, ValueError) as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is None:
            return result
        if transfer.aborted:
            raise TransientError(f"{_netloc(url)} sent no answer within its deadline") from None
        raise transport_failure(_netloc(url), failure, self._plain_http) from failure

    async def aclose(self) -> None:
        self._fetcher.close()


class _Across:
    """Hands pieces from a worker thread to ``deliver`` on the event loop, in order. A piece
    that comes while earlier ones still wait for the loop joins them rather than waking it
    again: one wake-up per burst, not per piece. Through ``run_sync_soon``, whose callbacks run
    in order, so every piece is delivered before the thread's result arrives."""

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._waiting: collections.deque[memoryview] = collections.deque()
        self._scheduled = False

    def __call__(self, buffer: memoryview) -> None:  # in the worker thread
        with self._lock:
            self._waiting.append(buffer)
            if self._scheduled:
                return
            self._scheduled = True
        self._token.run_sync_soon(self._drain)

    def _drain(self) -> None:  # on the event loop
        while True:
            with self._lock:
                if not self._waiting:
                    self._scheduled = False
                    return
                buffer = self._waiting.popleft()
            self._deliver(buffer)


async def _abort_at(deadline: float, transfer: Transfer) -> None:
    """Abort the transfer at its deadline, or when its caller is cancelled (once it is done,
    aborting does nothing)."""
    try:
        await trio.sleep_until(deadline)
    finally:
        transfer.abort()


class HttpxRanges:
    def __init__(self, client: httpx.AsyncClient, plain_http: bool) -> None:
        self._http = client
        self._plain_http = plain_http

    async def get(
        self,
        url: str,
        headers: dict[str, str],
        start: int,
        end: int,
        piece: int,
        deadline: float,
        deliver: Deliver,
    ) -> RangeResult:
        counted = _Counted(deliver)
        answer = RangeResult(0, url, broken=DEADLINE)
        with trio.move_on_at(deadline):
            answer = await self._get(url, headers, start, end, piece, counted)
        if answer.status == 0:
            if not counted.bytes:
                raise TransientError(f"{_netloc(url)} sent no answer within its deadline")
            answer.status, answer.delivered = 206, counted.bytes
        return answer

    async def _get(
        self,
        url: str,
        headers: dict[str, str],
        start: int,
        end: int,
        piece: int,
        deliver: _Counted,
    ) -> RangeResult:
        request = self._http.build_request(
            "GET", url, headers={**headers, "Accept-Encoding": "identity"}
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise transport_failure(_netloc(url), exc, self._plain_http) from exc
        try:
            status = response.status_code
            if status in REDIRECTS:
                await _drain(response)
                return RangeResult(status, url, location=response.headers.get("Location", ""))
            if status == 206:
                problem = range_problem(
                    response.headers.get("Content-Range"),
                    response.headers.get("Content-Length"),
                    start,
                    end,
                )
                if problem:
                    return RangeResult(206, url, problem=problem)
                broken = await _collect(response, 0, end - start, piece, deliver, strict=True)
                if broken == LONGER:
                    return RangeResult(206, url, deliver.bytes, problem=LONGER)
                return RangeResult(206, url, deliver.bytes, broken=broken)
            if status == 200:
                broken = await _collect(response, start, end - start, piece, deliver)
                return RangeResult(200, url, deliver.bytes, broken=broken)
            await _drain(response)
            return RangeResult(
                status,
                url,
                challenge=response.headers.get("WWW-Authenticate", ""),
                retry_after=response.headers.get("Retry-After", ""),
            )
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        pass  # the client owns the httpx client


class _Counted:
    """A deliver that counts the bytes it passed on."""

    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver
        self.bytes = 0

    def __call__(self, buffer: memoryview) -> None:
        self.bytes += len(buffer)
        self.deliver(buffer)


async def _collect(
    response: httpx.Response,
    skip: int,
    length: int,
    piece: int,
    deliver: Deliver,
    *,
    strict: bool = False,
) -> str:
    """Bytes ``[skip, skip + length)`` of the body, each buffer of ``piece`` bytes handed to
    ``deliver`` once full (the last, with ``strict``, once the body has ended with it), and why
    it stopped short ("" when it did not; ``LONGER`` when ``strict`` and the body goes on past
    them). A buffer left part filled is dropped, as :mod:`~modelkitfs.registry.ranges` does."""
    done = filled = 0
    buffer = aligned(min(piece, length)) if length else memoryview(bytearray())
    try:
        async for chunk in response.aiter_raw():
            view = memoryview(chunk)
            if skip:
                dropped = min(skip, len(view))
                view, skip = view[dropped:], skip - dropped
            while view:
                if done == length:
                    return LONGER if strict else ""
                take = min(len(view), len(buffer) - filled)
                buffer[filled : filled + take] = view[:take]
                view, done, filled = view[take:], done + take, filled + take
                if filled == len(buffer) and done < length:
                    deliver(buffer)
                    buffer, filled = aligned(min(piece, length - done)), 0
            if done == length and not strict:
                break
    except httpx.TransportError as exc:
        return f"the connection failed after {done} of {length} bytes ({exc or type(exc).__name__})"
    if done < length:
        return f"the response ended after {done} of {length} bytes"
    if length:
        deliver(buffer)
    return ""


async def _drain(response: httpx.Response) -> None:
    """Read at most an error body's worth of a body that is not data (closing the response
    then drops the connection if more was left)."""
    read = 0
    try:
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= MAX_ERROR_BODY:
                return
    except httpx.TransportError:
        return


def _netloc(url: str) -> str:
    return httpx.URL(url).netloc.decode("ascii")
