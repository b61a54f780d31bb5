"""The two ways blob ranges travel, behind one interface.

:class:`RangeTransport` is what the client asks for a range: one request, no redirects
followed, no retries, bounded by a deadline, answered with a
:class:`~modelkitfs.registry.ranges.RangeResult` or a typed error
(:class:`~modelkitfs.errors.Unreachable`, :class:`~modelkitfs.errors.TransientError`, or a
final :class:`~modelkitfs.errors.RegistryError` for TLS that cannot work). Both transports check
a 206 the same way (:mod:`modelkitfs.registry.partial`), keep what arrived of a transfer cut
short, and never read more of a body than the range or a bounded error body.

- :class:`ThreadedRanges`: blocking ``http.client`` connections in worker threads, the fast
  path (see :mod:`modelkitfs.registry.ranges`); the deadline is enforced from the event loop.
- :class:`HttpxRanges`: httpx on the event loop, used when a proxy is in play (httpx speaks to
  proxies; ``http.client`` as used here does not).
"""

from __future__ import annotations

import http.client
from typing import Protocol

import httpx
import trio

from modelkitfs.errors import TransientError
from modelkitfs.registry.partial import MAX_ERROR_BODY, range_problem
from modelkitfs.registry.ranges import REDIRECTS, RangeFetcher, RangeResult, Transfer
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
    ) -> RangeResult:
        """One GET of bytes ``[start, end)`` of ``url`` in buffers of ``piece`` bytes, given up
        at trio time ``deadline`` (what arrived by then is kept, ``broken`` says why)."""
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
    ) -> RangeResult:
        transfer = Transfer()
        failure: BaseException | None = None
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


async def _abort_at(deadline: float, transfer: Transfer) -> None:
    await trio.sleep_until(deadline)
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
    ) -> RangeResult:
        pieces: list[bytearray] = []
        answer = RangeResult(0, url, pieces, broken=DEADLINE)
        with trio.move_on_at(deadline):
            answer = await self._get(url, headers, start, end, piece, pieces)
        if answer.status == 0:
            if not pieces:
                raise TransientError(f"{_netloc(url)} sent no answer within its deadline")
            answer.status = 206
        return answer

    async def _get(
        self,
        url: str,
        headers: dict[str, str],
        start: int,
        end: int,
        piece: int,
        pieces: list[bytearray],
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
                broken = await _collect(response, 0, end - start, piece, pieces, strict=True)
                if broken == _LONGER:
                    return RangeResult(206, url, problem="its body is longer than the range")
                return RangeResult(206, url, pieces, broken=broken)
            if status == 200:
                broken = await _collect(response, start, end - start, piece, pieces)
                return RangeResult(200, url, pieces, broken=broken)
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


_LONGER = "longer"


async def _collect(
    response: httpx.Response,
    skip: int,
    length: int,
    piece: int,
    pieces: list[bytearray],
    *,
    strict: bool = False,
) -> str:
    """Bytes ``[skip, skip + length)`` of the body into ``pieces`` (buffers of ``piece``
    bytes), and why it stopped short ("" when it did not; ``_LONGER`` when ``strict`` and the
    body goes on past them). What arrived stays in ``pieces`` whatever happens."""
    done = 0
    buffer = bytearray()
    try:
        async for chunk in response.aiter_raw():
            view = memoryview(chunk)
            if skip:
                dropped = min(skip, len(view))
                view, skip = view[dropped:], skip - dropped
            while view:
                if done == length:
                    return _LONGER if strict else ""
                take = min(len(view), piece - len(buffer), length - done)
                buffer += view[:take]
                view, done = view[take:], done + take
                if len(buffer) == piece:
                    pieces.append(buffer)
                    buffer = bytearray()
    except httpx.TransportError as exc:
        return f"the connection failed after {done} of {length} bytes ({exc or type(exc).__name__})"
    finally:
        if buffer:
            pieces.append(buffer)
    if done < length:
        return f"the response ended after {done} of {length} bytes"
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
