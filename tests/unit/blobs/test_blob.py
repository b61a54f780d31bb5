"""What the archive layer reads through: a blob's ranges through the cache, scattered header
reads that skip it, a whole blob streamed past it, a blob fetched and verified whole, and bytes
derived from a blob kept in blocks every later store over the cache reuses. Counted at the
source: what a read asks for, and what lands in the cache."""

from __future__ import annotations

import json
import logging

import pytest
import trio
import trio.testing

from modelkitfs.blobs import Blob
from modelkitfs.blobs.blob import DERIVED_RECORD, SMALL_BLOB
from modelkitfs.cache import MemoryCache
from modelkitfs.registry.testing import MemorySource
from tests.unit.blobs.stores import BLOCK, OneBlob, opened

LARGE = SMALL_BLOB + 4 * BLOCK + 3  # past the size whose sparse reads go through the cache
SMALL = 6 * BLOCK + 3


def test_reads_are_the_blob_s_bytes_clipped_at_its_end() -> None:
    source = OneBlob(size=SMALL)

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            blob = store.blob(source.digest, source.size)
            assert await blob.read(BLOCK - 5, 10) == source.data[BLOCK - 5 : BLOCK + 5]
            assert await blob.read(source.size - 4, 100) == source.data[-4:]
            assert await blob.read(source.size, 1) == b""

    trio.run(main)


@pytest.mark.parametrize(("in_place", "cached"), [(False, True), (True, False)])
def test_only_a_blob_from_elsewhere_is_cached(in_place: bool, cached: bool) -> None:
    """kit's local storage is read where it lies: none of it lands in the cache."""
    source = OneBlob(size=SMALL, in_place=in_place)

    async def main() -> None:
        cache = MemoryCache()
        async with opened(source, cache) as store:
            blob = store.blob(source.digest, source.size)
            assert blob.cached is cached
            assert await blob.read(0, source.size) == source.data
        assert bool(cache.cached_blocks(source.digest, BLOCK, 0, 6)) is cached

    trio.run(main)


def test_a_sparse_read_of_a_large_blob_asks_for_its_bytes_alone_and_caches_nothing() -> None:
    source = OneBlob(size=LARGE)

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            blob = store.blob(source.digest, source.size)
            offset = 7 * BLOCK + 100
            assert await blob.read_sparse(offset, 512) == source.data[offset : offset + 512]
            tail = source.size - 10
            assert await blob.read_sparse(tail, 512) == source.data[tail:]  # clipped
            assert await blob.read_sparse(source.size, 512) == b""  # nothing to ask for
            await store.flush()
            assert await blob.cached_bytes() == 0
        assert source.requests == [
            (source.digest, offset, offset + 512),
            (source.digest, tail, source.size),
        ]

    trio.run(main)


def test_a_sparse_read_of_a_small_blob_goes_through_the_cache() -> None:
    """One request then serves every header of it."""
    source = OneBlob(size=SMALL)

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            blob = store.blob(source.digest, source.size)
            assert await blob.read_sparse(BLOCK + 3, 512) == source.data[BLOCK + 3 : BLOCK + 515]
            await store.flush()
            assert await blob.cached_bytes(BLOCK, 2 * BLOCK) == BLOCK
            asked = len(source.requests)
            assert (
                await blob.read_sparse(BLOCK + 1000, 10) == source.data[BLOCK + 1000 : BLOCK + 1010]
            )
            assert len(source.requests) == asked  # from memory or the cache

    trio.run(main)


def test_with_verify_full_a_sparse_read_waits_for_the_whole_blob_to_verify() -> None:
    source = OneBlob(size=LARGE)

    async def main() -> None:
        async with opened(source, MemoryCache(), verify="full") as store:
            blob = store.blob(source.digest, source.size)
            assert blob.verify_full
            assert (
                await blob.read_sparse(9 * BLOCK, 100) == source.data[9 * BLOCK : 9 * BLOCK + 100]
            )
            assert store.verifier.is_verified(source.digest)
            assert source.sent == source.size

    trio.run(main)


def test_a_sparse_read_a_server_answers_from_the_start_is_read_through_the_store() -> None:
    """A server that ignores Range answers the header's request with the blob from its start:
    the read then takes the blob in order through the store, and still gets its bytes."""
    source = OneBlob(size=LARGE, ignoring=True)

    async def main() -> None:
        async with opened(source, MemoryCache(), memory_bytes=64 * BLOCK) as store:
            blob = store.blob(source.digest, source.size)
            offset = 9 * BLOCK + 7
            assert await blob.read_sparse(offset, 100) == source.data[offset : offset + 100]
            assert source.requests[0] == (source.digest, offset, offset + 100)  # refused
            assert len(source.requests) > 1

    trio.run(main)


@pytest.mark.parametrize("chunk", [BLOCK, 3 * BLOCK + 1])
def test_a_stream_is_the_whole_blob_in_chunks_past_the_cache(chunk: int) -> None:
    source = OneBlob(size=SMALL)

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            blob = store.blob(source.digest, source.size)
            chunks = [bytes(c) async for c in blob.stream(chunk)]
            assert b"".join(chunks) == source.data
            assert [len(c) for c in chunks[:-1]] == [chunk] * (len(chunks) - 1)
            await store.flush()
            assert await blob.cached_bytes() == 0  # its consumer keeps what it derives
        starts = list(range(0, source.size, chunk))
        assert source.requests == [(source.digest, s, min(s + chunk, source.size)) for s in starts]

    trio.run(main)


def test_a_stream_goes_on_when_the_server_starts_its_answer_over() -> None:
    """Another reader moved the one answer a server that ignores Range keeps open: the
    stream's next chunk is refused once, then read from the answer started over."""
    source = OneBlob(size=SMALL, ignoring=True)

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            blob = store.blob(source.digest, source.size)
            chunks = blob.stream(BLOCK)
            got = [await chunks.__anext__()]
            await source.get_range("repo", source.digest, 4 * BLOCK, 4 * BLOCK + 10)
            got += [c async for c in chunks]
            assert b"".join(got) == source.data
            assert source.requests.count((source.digest, BLOCK, 2 * BLOCK)) == 2

    trio.run(main)


def test_fetching_verified_brings_the_blob_whole_once() -> None:
    source = OneBlob(size=SMALL)

    async def main() -> None:
        async with opened(source, MemoryCache(), memory_bytes=16 * BLOCK) as store:
            blob = store.blob(source.digest, source.size)
            await blob.fetch_verified()
            assert store.verifier.is_verified(source.digest)
            assert await blob.cached_bytes() == source.size
            await blob.fetch_verified()
        assert source.sent == source.size

    trio.run(main)


def test_a_blob_read_in_place_is_not_fetched_to_be_verified() -> None:
    source = OneBlob(size=SMALL, in_place=True)

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            await store.blob(source.digest, source.size).fetch_verified()
        assert source.requests == [] and source.sent == 0

    trio.run(main)


def test_work_in_the_background_runs_behind_readers_until_the_store_stops() -> None:
    source = OneBlob(size=SMALL)
    events: list[str] = []

    async def work() -> None:
        events.append("started")
        try:
            await trio.sleep_forever()
        finally:
            events.append("stopped")

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            store.blob(source.digest, source.size).in_background(work)
            await trio.testing.wait_all_tasks_blocked()
            assert events == ["started"]
            store.stop_ahead()
            await trio.testing.wait_all_tasks_blocked()
            assert events == ["started", "stopped"]

    trio.run(main)


def test_sidecar_files_are_kept_per_blob_for_later_stores() -> None:
    source = OneBlob(size=SMALL)
    other = source.add(b"another blob")
    cache = MemoryCache()

    async def main() -> None:
        async with opened(source, cache) as store:
            await store.blob(source.digest, source.size).save_meta("index.json", b"[1]")
        async with opened(source, cache) as store:
            assert await store.blob(source.digest, source.size).load_meta("index.json") == b"[1]"
            assert await store.blob(other, 12).load_meta("index.json") is None
            assert await store.blob(source.digest, source.size).load_meta("other") is None

    trio.run(main)


# --- derived bytes ----------------------------------------------------------------------------

KEY = "sha256:" + "d" * 64
DERIVED = bytes(range(256)) * (3 * BLOCK // 256) + b"tail"  # three blocks and a bit


async def write_derived(blob: Blob, data: bytes = DERIVED) -> None:
    derived = blob.derived(KEY)
    for index, start in enumerate(range(0, len(data), derived.block_size)):
        await derived.write_block(index, data[start : start + derived.block_size])


def test_derived_bytes_are_read_back_across_blocks_up_to_what_exists() -> None:
    source = OneBlob(size=SMALL)

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            blob = store.blob(source.digest, source.size)
            await write_derived(blob)
            derived = blob.derived(KEY)
            assert (
                await derived.read(BLOCK - 10, 20, len(DERIVED)) == DERIVED[BLOCK - 10 : BLOCK + 10]
            )
            assert await derived.read(0, len(DERIVED), len(DERIVED)) == DERIVED
            # Only the first ``end`` bytes are known to exist: nothing past them is read.
            assert (
                await derived.read(2 * BLOCK - 4, 100, 2 * BLOCK)
                == DERIVED[2 * BLOCK - 4 : 2 * BLOCK]
            )
            assert await derived.read(2 * BLOCK, 100, 2 * BLOCK) == b""

    trio.run(main)


def test_derived_bytes_are_unfinished_until_finish_and_shared_once_finished() -> None:
    source = OneBlob(size=SMALL)
    cache = MemoryCache()

    async def produce() -> None:
        async with opened(source, cache) as store:
            blob = store.blob(source.digest, source.size)
            await write_derived(blob)
            assert await blob.derived(KEY).finished_size() is None  # not trusted yet
            await blob.derived(KEY).finish(len(DERIVED))

    async def reuse() -> None:
        async with opened(source, cache) as store:  # another mount over the cache
            derived = store.blob(source.digest, source.size).derived(KEY)
            assert await derived.finished_size() == len(DERIVED)
            assert await derived.read(0, len(DERIVED), len(DERIVED)) == DERIVED
        assert source.requests == []  # derived bytes are never the source's

    trio.run(produce)
    trio.run(reuse)


@pytest.mark.parametrize(
    "record",
    [
        json.dumps({"size": 10, "block_size": 2 * BLOCK}).encode(),  # cut in other blocks
        b"{",
        b'{"size": 10}',
        b'{"size": "ten", "block_size": %d}' % BLOCK,
    ],
)
def test_a_record_of_other_blocks_or_unreadable_means_unfinished(
    record: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    source = OneBlob(size=SMALL)

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            await store.save_meta(KEY, DERIVED_RECORD, record)
            assert await store.blob(source.digest, source.size).derived(KEY).finished_size() is None

    with caplog.at_level(logging.WARNING):
        trio.run(main)
    if b'block_size": %d' % (2 * BLOCK) not in record:
        assert [r.getMessage() for r in caplog.records] == [
            f"ignoring unreadable {DERIVED_RECORD} of {KEY}"
        ]


def test_a_missing_or_discarded_derived_block_reads_as_none() -> None:
    source = OneBlob(size=SMALL)

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            blob = store.blob(source.digest, source.size)
            derived = blob.derived(KEY)
            await derived.write_block(0, DERIVED[:BLOCK])
            assert await derived.read(0, 10, len(DERIVED)) == DERIVED[:10]
            assert await derived.read(BLOCK - 5, 10, len(DERIVED)) is None  # block 1 missing
            await derived.discard()
            assert await derived.read(0, 10, len(DERIVED)) is None

    trio.run(main)


def test_derived_blocks_are_written_at_once_not_behind() -> None:
    """A reader may need a block from the cache before the producer finishes: it is there
    as soon as it is written, whatever the store holds in memory."""
    source = OneBlob(size=SMALL)
    cache = MemoryCache()

    async def main() -> None:
        async with opened(source, cache) as store:
            await (
                store.blob(source.digest, source.size).derived(KEY).write_block(0, DERIVED[:BLOCK])
            )
            assert cache.read_block(KEY, BLOCK, 0, BLOCK) == DERIVED[:BLOCK]

    trio.run(main)


def test_a_sparse_read_of_a_blob_in_place_asks_for_its_bytes_alone() -> None:
    source = MemorySource(in_place=True)
    data = b"x" * 1000
    digest = source.add(data)

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            assert await store.blob(digest, len(data)).read_sparse(10, 20) == data[10:30]
        assert source.requests == [(digest, 10, 30)]  # read where it lies, nothing more

    trio.run(main)
