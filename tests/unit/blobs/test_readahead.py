"""What the readahead asks to fetch, for streams, jumps and tensors read whole."""

from __future__ import annotations

import itertools

from modelkitfs.blobs.readahead import MAX_WINDOW, MIN_WINDOW, Readahead

MiB = 1024 * 1024
BLOB = "sha256:" + "a" * 64
SIZE = 1024 * MiB


def test_a_first_read_fetches_nothing_ahead() -> None:
    assert Readahead().advise(BLOB, SIZE, 100 * MiB, 101 * MiB) == []


def test_a_stream_gets_a_window_that_never_passes_the_file_end() -> None:
    readahead = Readahead()
    fetched = []
    for i in range(40):
        fetched += readahead.advise(BLOB, SIZE, i * MiB, (i + 1) * MiB, limit=42 * MiB)
    assert fetched and fetched[0][0] >= 1 * MiB
    assert max(stop for _, stop in fetched) == 42 * MiB
    assert all(start < stop for start, stop in fetched)


def test_a_read_inside_a_tensor_fetches_the_rest_of_it_at_once() -> None:
    parts = Readahead().advise(BLOB, SIZE, 100 * MiB, 101 * MiB, unit_end=117 * MiB + 5)
    assert parts[0][0] <= 101 * MiB and parts[-1][1] == 117 * MiB + 5
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))  # no gaps
    assert 4 <= len(parts) <= 16  # in parallel parts


def test_a_huge_tensor_is_fetched_64_mib_ahead_at_most() -> None:
    parts = Readahead().advise(BLOB, SIZE, 0, MiB, unit_end=900 * MiB)
    assert parts[-1][1] == MiB + MAX_WINDOW


def test_past_a_tensor_read_in_order_only_the_stream_window_is_fetched() -> None:
    readahead = Readahead()
    fetched = readahead.advise(BLOB, SIZE, 100 * MiB, 101 * MiB, unit_end=104 * MiB)
    for i in range(101, 104):
        fetched += readahead.advise(BLOB, SIZE, i * MiB, (i + 1) * MiB, unit_end=104 * MiB)
    assert max(stop for _, stop in fetched) <= 104 * MiB + MIN_WINDOW  # the next may follow
