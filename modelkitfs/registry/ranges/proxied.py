"""Blob ranges through httpx on the event loop, used when a proxy is in play: httpx speaks to
proxies, ``http.client`` as :mod:`~modelkitfs.registry.ranges.connections` uses it does not.

The answer is judged as the threaded transport judges it (:func:`~.exchange.classify`), what
arrived of a transfer cut short is kept, and no more of a body is read than the range or a
bounded error body.
"""

from __future__ import annotations

import dataclasses

import httpx
import trio

from modelkitfs.primitives.buffers import aligned
from modelkitfs.registry.network import MAX_ERROR_BODY, transport_failure
from modelkitfs.registry.ranges.exchange import (
    DEADLINE,
    LONGER,
    RangeRequest,
    RangeResult,
    classify,
    no_answer,
)
from modelkitfs.registry.source import Deliver
from modelkitfs.registry.status import host


class HttpxRanges:
    def __init__(self, client: httpx.AsyncClient, plain_http: bool) -> None:
        self._http = client
        self._plain_http = plain_http

    async def get(self, request: RangeRequest) -> RangeResult:
        counted = _Counted(request.deliver)
        answer = RangeResult(0, request.url, broken=DEADLINE)
        with trio.move_on_at(request.deadline):
            answer = await self._get(dataclasses.replace(request, deliver=counted))
        if answer.status == 0:
            if not counted.bytes:
                raise no_answer(request)
            answer.status, answer.delivered = 206, counted.bytes
        return answer

    async def _get(self, request: RangeRequest) -> RangeResult:
        sent = self._http.build_request(
            "GET", request.url, headers={**request.headers, "Accept-Encoding": "identity"}
        )
        try:
            response = await self._http.send(sent, stream=True)
        except httpx.TransportError as exc:
            raise transport_failure(host(request.url), exc, self._plain_http) from exc
        try:
            answer = classify(request, response.status_code, response.headers.get)
            if isinstance(answer, RangeResult):
                if not answer.problem:
                    await _drain(response)
                return answer
            delivered, broken = await _collect(response, request, answer.skip, answer.strict)
            return answer.result(request, delivered, broken)
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
    response: httpx.Response, request: RangeRequest, skip: int, strict: bool
) -> tuple[int, str]:
    """The range from the body after ``skip`` bytes, each buffer of ``request.piece`` bytes
    handed to ``request.deliver`` once full (the last, with ``strict``, once the body has ended
    with it); how many bytes went, and why it stopped short ("" when it did not; ``LONGER``
    when ``strict`` and the body goes on past the range). A buffer left part filled is dropped,
    as :mod:`~modelkitfs.registry.ranges.connections` does."""
    done = filled = delivered = 0
    length, piece = request.length, request.piece
    buffer = aligned(min(piece, length), zeroed=False) if length else memoryview(bytearray())
    try:
        async for chunk in response.aiter_raw():
            view = memoryview(chunk)
            if skip:
                dropped = min(skip, len(view))
                view, skip = view[dropped:], skip - dropped
            while view and done < length:
                take = min(len(view), len(buffer) - filled)
                buffer[filled : filled + take] = view[:take]
                view, done, filled = view[take:], done + take, filled + take
                if filled == len(buffer) and done < length:
                    request.deliver(buffer)
                    delivered += filled
                    buffer, filled = aligned(min(piece, length - done), zeroed=False), 0
            if done == length and not strict:
                break
            if view:  # strict, and the body goes on past the range
                return delivered, LONGER
    except httpx.TransportError as exc:
        why = f"({exc or type(exc).__name__})"
        return delivered, f"the connection failed after {done} of {length} bytes {why}"
    if done < length:
        return delivered, f"the response ended after {done} of {length} bytes"
    if length:
        request.deliver(buffer)
    return length, ""


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
