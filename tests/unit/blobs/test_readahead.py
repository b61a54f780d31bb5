"""What the readahead asks to fetch, for streams, jumps and tensors read whole."""

from __future__ import annotations

import itertools
import random

from modelkitfs.blobs.readahead import MAX_PART, MAX_WINDOW, MIN_WINDOW, Readahead, ReadHint

MiB = 1024 * 1024
BLOB = "sha256:" + "a" * 64
SIZE = 1024 * MiB


def test_a_first_read_fetches_nothing_ahead() -> None:
    assert Readahead().advise(BLOB, SIZE, 100 * MiB, 101 * MiB) == []


def test_a_stream_gets_a_window_that_never_passes_the_file_end() -> None:
    readahead = Readahead()
    fetched = []
    for i in range(40):
        fetched += readahead.advise(BLOB, SIZE, i * MiB, (i + 1) * MiB, ReadHint(file_end=42 * MiB))
    assert fetched and fetched[0][0] >= 1 * MiB
    assert max(stop for _, stop in fetched) == 42 * MiB
    assert all(start < stop for start, stop in fetched)


def test_a_read_inside_a_tensor_fetches_the_rest_of_it_at_once() -> None:
    parts = Readahead().advise(BLOB, SIZE, 100 * MiB, 101 * MiB, ReadHint(unit_end=117 * MiB + 5))
    assert parts[0][0] <= 101 * MiB and parts[-1][1] == 117 * MiB + 5
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))  # no gaps
    assert 4 <= len(parts) <= 16  # in parallel parts


def test_a_huge_tensor_is_fetched_64_mib_ahead_at_most() -> None:
    parts = Readahead().advise(BLOB, SIZE, 0, MiB, ReadHint(unit_end=900 * MiB))
    assert parts[-1][1] == MiB + MAX_WINDOW


def test_past_a_tensor_read_in_order_only_the_stream_window_is_fetched() -> None:
    readahead = Readahead()
    fetched = readahead.advise(BLOB, SIZE, 100 * MiB, 101 * MiB, ReadHint(unit_end=104 * MiB))
    for i in range(101, 104):
        fetched += readahead.advise(
            BLOB, SIZE, i * MiB, (i + 1) * MiB, ReadHint(unit_end=104 * MiB)
        )
    assert max(stop for _, stop in fetched) <= 104 * MiB + MIN_WINDOW  # the next may follow


def test_a_random_reader_is_no_stream_though_some_reads_land_just_past_others() -> None:
    readahead, rng = Readahead(), random.Random(3)
    fetched = []
    for _ in range(5000):
        at = rng.randrange(SIZE // 4096) * 4096
        fetched += readahead.advise(BLOB, SIZE, at, at + 4096)
    assert fetched == []


def test_streams_at_once_share_the_memory_for_fetching_ahead() -> None:
    readahead = Readahead(max_bytes=48 * MiB)
    ahead: dict[int, int] = {}
    for step in range(200):
        for reader in range(4):  # four readers, each its quarter of the file, in order
            start = reader * SIZE // 4 + step * MiB
            for _, stop in readahead.advise(BLOB, SIZE, start, start + MiB):
                ahead[reader] = max(ahead.get(reader, 0), stop - start - MiB)
    assert len(ahead) == 4 and max(ahead.values()) <= 48 * MiB // 4 + MAX_PART
    alone = Readahead(max_bytes=48 * MiB)
    fetched = [alone.advise(BLOB, SIZE, i * MiB, (i + 1) * MiB) for i in range(400)]
    assert max(stop for parts in fetched for _, stop in parts) > 400 * MiB + 24 * MiB
