"""The httpx range transport (the one taken through a proxy) over httpx's MockTransport: the
range delivered in pieces, a 200 skipped to the range, a 206 for another range or longer than
it never believed, redirects and challenges handed back, and a deadline that keeps what came."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import trio
import trio.testing

from modelkitfs.errors import TransientError, Unreachable
from modelkitfs.registry.ranges import HttpxRanges, RangeRequest, RangeResult
from modelkitfs.registry.ranges.exchange import DEADLINE, LONGER

BLOB = bytes(range(256)) * 64
URL = "http://reg.test/v2/team/kit/blobs/sha256:x"
Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def get(
    handler: Handler, start: int, end: int, *, seconds: float = 30, authorization: str = ""
) -> tuple[RangeResult, list[bytes]]:
    """One request for ``[start, end)`` in pieces of 1000 bytes; its result and pieces."""
    pieces: list[bytes] = []

    async def main() -> RangeResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            deadline = trio.current_time() + seconds
            deliver = lambda buffer: pieces.append(bytes(buffer))  # noqa: E731
            request = RangeRequest(URL, start, end, 1000, deliver, deadline, authorization)
            return await HttpxRanges(client, plain_http=True).get(request)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)), pieces


class Body(httpx.AsyncByteStream):
    """A body streamed as a network's is, in ``chunks``; with ``stall``, then nothing more."""

    def __init__(self, *chunks: bytes, stall: bool = False) -> None:
        self.chunks, self.stall = chunks, stall

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.stall:
            await trio.sleep_forever()


def answer(status: int, headers: dict[str, str], *chunks: bytes, stall: bool = False) -> Handler:
    """A handler answering ``status`` with ``headers`` and a body of ``chunks``."""
    return lambda request: httpx.Response(
        status, headers=headers, stream=Body(*chunks, stall=stall)
    )


def partial(start: int, end: int) -> Handler:
    """A 206 of ``[start, end)`` of the blob, its length framed by Content-Length."""
    headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(BLOB)}"}
    return answer(206, {**headers, "Content-Length": str(end - start)}, BLOB[start:end])


def test_a_206_is_delivered_in_pieces_with_the_request_s_headers() -> None:
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response | Awaitable[httpx.Response]:
        sent.append(request)
        return partial(100, 3100)(request)

    result, pieces = get(handle, 100, 3100, authorization="Bearer t")
    assert (result.status, result.delivered, result.broken, result.problem) == (206, 3000, "", "")
    assert [len(p) for p in pieces] == [1000, 1000, 1000] and b"".join(pieces) == BLOB[100:3100]
    headers = sent[0].headers
    assert headers["Range"] == "bytes=100-3099" and headers["Authorization"] == "Bearer t"
    assert headers["Accept-Encoding"] == "identity"


def test_a_200_is_the_whole_blob_and_the_range_is_skipped_to() -> None:
    whole = answer(200, {"Content-Length": str(len(BLOB))}, BLOB[:4096], BLOB[4096:])
    result, pieces = get(whole, 5000, 7500)
    assert (result.status, result.delivered) == (200, 2500) and b"".join(pieces) == BLOB[5000:7500]


def test_a_206_for_another_range_is_never_believed() -> None:
    result, pieces = get(partial(0, 3000), 100, 3100)
    assert result.problem.startswith("a 206 for another range") and pieces == []


def test_a_206_framed_by_nothing_is_checked_to_end_with_the_range() -> None:
    headers = {"Content-Range": f"bytes 0-2499/{len(BLOB)}", "Transfer-Encoding": "chunked"}
    result, pieces = get(answer(206, headers, BLOB[:2500], BLOB[2500:2600]), 0, 2500)
    assert result.problem == LONGER and result.delivered == 2000
    assert b"".join(pieces) == BLOB[:2000]  # the last piece is held back: it proved wrong


@pytest.mark.parametrize(
    ("status", "header", "field", "value"),
    [
        (307, "Location", "location", "http://s.test/b"),
        (401, "WWW-Authenticate", "challenge", 'Bearer realm="r"'),
        (503, "Retry-After", "retry_after", "7"),
    ],
)
def test_answers_without_the_range_are_handed_back(
    status: int, header: str, field: str, value: str
) -> None:
    result, pieces = get(answer(status, {header: value}, b"not the blob"), 0, 100)
    assert result.status == status and getattr(result, field) == value
    assert pieces == [] and result.delivered == 0


def test_a_stalled_transfer_keeps_what_came_by_its_deadline() -> None:
    headers = {"Content-Range": f"bytes 0-9999/{len(BLOB)}", "Content-Length": "10000"}
    result, pieces = get(answer(206, headers, BLOB[:2500], stall=True), 0, 10_000, seconds=5)
    assert (result.status, result.delivered, result.broken) == (206, 2000, DEADLINE)
    assert b"".join(pieces) == BLOB[:2000]


def test_no_answer_by_the_deadline_is_transient() -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    with pytest.raises(TransientError, match=r"reg\.test sent no answer within its deadline"):
        get(handle, 0, 100, seconds=5)


def test_a_refused_connection_is_unreachable() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request) from ConnectionRefusedError()

    with pytest.raises(Unreachable, match="connection refused"):
        get(handle, 0, 100)
