"""Blocks written to the cache behind the reader that downloaded them.

Writing a block file costs CPU and time (the checksum, the write, the rename), which a reader
need not wait for: the block is in memory at once, and its write runs as a background job of
the session (:mod:`~modelkitfs.blobs.jobs`). Blocks are handed over as they arrive from the
network, without waiting (:meth:`WriteBehind.put`); once ``WRITE_BEHIND`` or more wait for
their write, the next download waits for room (:meth:`WriteBehind.room`). The block's download
claim is released once it is on disk, so that other processes wait for the file rather than download
the block again. A full or read-only disk costs speed, never a failed read: the cache warns
once, writes are skipped for a while, then tried again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from modelkitfs.blobs.blocks import Blocks, CacheStats
from modelkitfs.blobs.jobs import Jobs
from modelkitfs.cache import BlockClaim, BlockMemory, CacheWrites
from modelkitfs.primitives.buffers import Buffer

log = logging.getLogger(__name__)

WRITE_BEHIND = 32  # blocks waiting for their disk write, per store


OnWritten = Callable[[str, int, int, Buffer], None]  # digest, blob size, index, block


class WriteBehind:
    """Writes blocks of ``blocks`` size to the cache through ``cache``, each kept in ``memory``
    meanwhile, in ``jobs``; ``on_written`` hears of each block of a known blob on disk."""

    def __init__(
        self,
        cache: CacheWrites,
        memory: BlockMemory,
        jobs: Jobs,
        on_written: OnWritten,
        *,
        blocks: Blocks,
        stats: CacheStats,
    ) -> None:
        self.cache = cache
        self.memory = memory
        self.jobs = jobs
        self.on_written = on_written
        self.blocks = blocks
        self.stats = stats
        self.waiting = 0  # blocks handed over whose write has not ended
        self._room = trio.Event()
        self._room.set()

    def put(
        self,
        digest: str,
        index: int,
        data: Buffer,
        *,
        claim: BlockClaim | None = None,
        size: int | None = None,
    ) -> None:
        """Keep a block in memory at once and write it to disk in the background, when it
        can. ``claim``, the block's download claim, is released once the block is on disk;
        with the blob's ``size``, a written block counts towards verifying the blob."""
        self.memory.put((digest, index), data)
        self.waiting += 1
        if self.waiting == WRITE_BEHIND:
            self._room = trio.Event()
        self.jobs.start(self._behind, digest, index, data, claim, size)

    async def room(self) -> None:
        """Wait while ``WRITE_BEHIND`` blocks or more wait for their write."""
        while self.waiting >= WRITE_BEHIND:
            await self._room.wait()

    async def put_now(self, digest: str, index: int, data: Buffer) -> None:
        """Keep a block in memory and write it to disk now (when it can)."""
        self.memory.put((digest, index), data)
        await self.write(digest, index, data)

    async def _behind(
        self, digest: str, index: int, data: Buffer, claim: BlockClaim | None, size: int | None
    ) -> None:
        try:
            if await self.write(digest, index, data) and size is not None:
                self.on_written(digest, size, index, data)
        finally:
            self.waiting -= 1
            if self.waiting < WRITE_BEHIND:
                self._room.set()
            if claim is not None:
                claim.release(index)

    async def write(self, digest: str, index: int, block: Buffer) -> bool:
        """Write a block to the cache now; False when it could not."""
        if not self.cache.writable:
            return False
        try:
            await self.cache.write_block(digest, self.blocks.size, index, block)
        except OSError as exc:
            self.stats.write_failures += 1
            log.debug("block %d of %s not cached: %s", index, digest, exc)
            return False
        return True

    async def join(self) -> None:
        """Wait until every block written behind so far is on disk (or given up)."""
        await self.jobs.join()
