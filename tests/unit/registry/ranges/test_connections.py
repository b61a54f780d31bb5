"""The threaded range transport against a server that ignores Range: its whole-blob answer is
kept open and carried on, so that a blob read in order is sent once (issue 18, case 7)."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from modelkitfs.registry.ranges import RangeFetcher, RangeRequest
from modelkitfs.registry.ranges.exchange import WHOLE_BLOB_KEPT

BLOB = np.random.default_rng(4).bytes(3 * 1024 * 1024 + 11)


class WholeBlobServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests = 0
        self.sent = 0
        self.lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: WholeBlobServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        try:
            for i in range(0, len(BLOB), 65536):
                self.wfile.write(BLOB[i : i + 65536])
                with self.server.lock:
                    self.server.sent += len(BLOB[i : i + 65536])
        except OSError:
            pass  # the client closed the answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[WholeBlobServer]:
    handle = WholeBlobServer()
    thread = threading.Thread(target=handle.serve_forever, daemon=True)
    thread.start()
    yield handle
    handle.shutdown()
    handle.server_close()


def test_ranges_read_in_order_carry_on_one_answer(server: WholeBlobServer) -> None:
    fetcher = RangeFetcher(ssl.create_default_context(), timeout=10)
    url = f"http://127.0.0.1:{server.server_address[1]}/v2/r/blobs/sha256:x"
    try:
        # In order, with gaps (blocks cached already): skipped on the same answer.
        for start, end in [(0, 1000), (1000, 300_000), (400_000, 1_500_000), (2_000_000, None)]:
            end = len(BLOB) if end is None else end
            pieces: list[memoryview] = []
            result = fetcher.fetch(RangeRequest(url, start, end, 65536, pieces.append))
            assert result.status == 200 and not result.problem and not result.broken
            assert b"".join(pieces) == BLOB[start:end] and result.delivered == end - start
        assert server.requests == 1
    finally:
        fetcher.close()


def test_a_range_further_in_is_not_skipped_to_but_kept_at_the_start(
    server: WholeBlobServer,
) -> None:
    fetcher = RangeFetcher(ssl.create_default_context(), timeout=10)
    url = f"http://127.0.0.1:{server.server_address[1]}/v2/r/blobs/sha256:y"
    try:
        start = 2 * 1024 * 1024
        pieces: list[memoryview] = []
        result = fetcher.fetch(RangeRequest(url, start, start + 100, 65536, pieces.append))
        assert result.problem == WHOLE_BLOB_KEPT and pieces == []
        # The kept answer:
        fetcher.fetch(RangeRequest(url, start, start + 100, 65536, pieces.append))
        assert b"".join(pieces) == BLOB[start : start + 100]
        pieces.clear()
        fetcher.fetch(RangeRequest(url, start + 100, len(BLOB), 65536, pieces.append))
        assert b"".join(pieces) == BLOB[start + 100 :]
        assert server.requests == 1
        pieces.clear()
        fetcher.fetch(RangeRequest(url, 0, 10, 65536, pieces.append))  # before the answer: anew
        assert b"".join(pieces) == BLOB[:10]
        assert server.requests == 2
    finally:
        fetcher.close()
