"""The threaded range transport: pieces reach the event loop as they arrive, and a caller that
gives up aborts its transfer (a thread and a connection are not held to the end of a range)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import trio

from modelkitfs.registry.ranges import RangeFetcher, RangeRequest, ThreadedRanges
from modelkitfs.registry.ranges.threaded import _Across
from tests.support.waiting import until

PIECE = 64 * 1024
LENGTH = 16 * PIECE


class HalfServer:
    """Answers one range with its headers and first two pieces, then sends nothing more until
    the client closes the connection (which it notes), or for a minute: far less than the
    client's stall timeout, so that only an abort closes it in time."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed_by_client = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(60)  # the test's bound, not a speed claim
            connection.recv(65536)
            connection.sendall(
                b"HTTP/1.1 206 Partial Content\r\n"
                + f"Content-Range: bytes 0-{LENGTH - 1}/{LENGTH}\r\n".encode()
                + f"Content-Length: {LENGTH}\r\n\r\n".encode()
                + bytes(2 * PIECE)
            )
            try:
                if connection.recv(1) == b"":
                    self.closed_by_client.set()
            except TimeoutError:
                pass  # never closed: the test fails
            except OSError:
                self.closed_by_client.set()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def server() -> Iterator[HalfServer]:
    handle = HalfServer()
    yield handle
    handle.close()


def test_pieces_arrive_while_the_range_is_still_coming_and_cancelling_aborts_it(
    server: HalfServer,
) -> None:
    ranges = ThreadedRanges(
        RangeFetcher(ssl.create_default_context(), timeout=600), trio.CapacityLimiter(2), True
    )
    url = f"http://127.0.0.1:{server.port}/v2/r/blobs/sha256:x"
    pieces: list[memoryview] = []

    async def main() -> None:
        with trio.CancelScope() as scope:

            async def give_up_once_two_came() -> None:
                await until(lambda: len(pieces) == 2, "two pieces delivered")
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(give_up_once_two_came)
                deadline = trio.current_time() + 600
                await ranges.get(RangeRequest(url, 0, LENGTH, PIECE, pieces.append, deadline))
        assert scope.cancelled_caught

    trio.run(main)
    assert [len(p) for p in pieces] == [PIECE, PIECE]
    assert server.closed_by_client.wait(60), "the transfer was not aborted"


def test_pieces_from_a_thread_arrive_in_order_and_all_before_its_result() -> None:
    """The store lands a block as the next of its run: one out of order, or one arriving
    after the request returned, would be a wrong byte or a lost block."""
    delivered: list[int] = []

    async def main() -> None:
        across = _Across(lambda buffer: delivered.append(buffer[0] + 256 * buffer[1]))

        def send() -> None:
            for i in range(5000):
                across(memoryview(bytes([i % 256, i // 256])))

        await trio.to_thread.run_sync(send)
        assert delivered == list(range(5000))

    trio.run(main)
