"""Blocks written behind the reader: joined by flush, failures costing speed, never a read."""

from __future__ import annotations

import threading

import trio
import trio.testing

from modelkitfs.blobs.write_behind import WRITE_BEHIND
from modelkitfs.cache import MemoryCache
from modelkitfs.primitives.buffers import Buffer
from tests.support.waiting import until
from tests.unit.blobs.stores import BLOCK, OneBlob, opened


class SlowCache(MemoryCache):
    """Writes that take a while (a disk under load), or fail (a full one)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.writes = 0

    def write_block(self, digest: str, block_size: int, index: int, data: Buffer) -> None:
        self.writes += 1
        if self.fail:
            raise OSError(28, "No space left on device")
        super().write_block(digest, block_size, index, data)


def test_flush_joins_every_write_behind() -> None:
    source = OneBlob(size=20 * BLOCK)
    cache = SlowCache()

    async def main() -> None:
        async with opened(source, cache, memory_bytes=64 * BLOCK) as store:
            assert await store.read(source.digest, source.size, 0, source.size) == source.data
            await store.flush()
            assert cache.cached_blocks(source.digest, BLOCK, 0, 19) == set(range(20))
            assert store.writes.jobs.running == 0
            # All its blocks on disk: the blob was verified behind the reader, and joined too.
            assert store.verifier.is_verified(source.digest)

    trio.run(main)


def test_a_cache_that_cannot_be_written_costs_no_read() -> None:
    source = OneBlob(size=8 * BLOCK)
    cache = SlowCache(fail=True)

    async def main() -> None:
        async with opened(source, cache, memory_bytes=64 * BLOCK) as store:
            assert await store.read(source.digest, source.size, 0, source.size) == source.data
            await store.flush()
            assert store.stats.write_failures == cache.writes > 0
            assert not cache.cached_blocks(source.digest, BLOCK, 0, 7)
            assert await store.read(source.digest, source.size, 0, source.size) == source.data

    trio.run(main)


class StuckCache(MemoryCache):
    """Writes that wait until ``free`` is set (a disk far slower than the network)."""

    def __init__(self) -> None:
        super().__init__()
        self.free = threading.Event()

    def write_block(self, digest: str, block_size: int, index: int, data: Buffer) -> None:
        assert self.free.wait(60), "the test never freed the disk"
        super().write_block(digest, block_size, index, data)


def test_once_32_blocks_wait_for_the_disk_no_new_download_starts() -> None:
    """Blocks land without waiting for their write, so the memory of writes not yet done is
    bounded by holding back the next request instead."""
    source = OneBlob(size=40 * BLOCK)
    cache = StuckCache()

    async def main() -> None:
        async with opened(source, cache, memory_bytes=64 * BLOCK) as store:
            async with trio.open_nursery() as nursery:
                got: list[bytes] = []

                async def reader() -> None:
                    got.append(await store.read(source.digest, source.size, 0, source.size))

                nursery.start_soon(reader)
                await until(lambda: store.writes.waiting == WRITE_BEHIND, "32 writes waiting")
                await trio.testing.wait_all_tasks_blocked()
                assert [(s, e) for _, s, e in source.requests] == [(0, 32 * BLOCK)]
                assert not got
                cache.free.set()
            assert got == [source.data]
            assert [(s, e) for _, s, e in source.requests] == [
                (0, 32 * BLOCK),
                (32 * BLOCK, 40 * BLOCK),
            ]

    trio.run(main)
