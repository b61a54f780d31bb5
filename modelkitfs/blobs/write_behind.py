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

import errno
import logging
from typing import TYPE_CHECKING

import trio

from modelkitfs.blobs.block_cache import BlockClaim
from modelkitfs.blobs.blockfile import CHECKSUM, Buffer
from modelkitfs.blobs.jobs import Jobs

if TYPE_CHECKING:
    from modelkitfs.blobs.store import BlobStore

log = logging.getLogger(__name__)

WRITE_BEHIND = 32  # blocks waiting for their disk write, per store


class WriteBehind:
    def __init__(self, store: BlobStore, jobs: Jobs) -> None:
        self.store = store
        self.jobs = jobs
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
        self.store.memory.put((digest, index), data)
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
        self.store.memory.put((digest, index), data)
        await self.write(digest, index, data)

    async def _behind(
        self, digest: str, index: int, data: Buffer, claim: BlockClaim | None, size: int | None
    ) -> None:
        try:
            if await self.write(digest, index, data) and size is not None:
                self.store.verifier.seen(digest, size, index, data)
        finally:
            self.waiting -= 1
            if self.waiting < WRITE_BEHIND:
                self._room.set()
            if claim is not None:
                claim.release(index)

    async def write(self, digest: str, index: int, block: Buffer) -> bool:
        """Write a block to the cache now; False when it could not."""
        store = self.store
        if not store.cache.writable:
            return False
        try:
            await trio.to_thread.run_sync(
                store.cache.write_block, digest, store.block_size, index, block
            )
        except OSError as exc:
            store.stats.write_failures += 1
            log.debug("block %d of %s not cached: %s", index, digest, exc)
            if exc.errno == errno.ENOSPC and store.budget is not None:
                await store.budget.prune()
            return False
        if store.budget is not None:
            await store.budget.wrote(len(block) + CHECKSUM)
        return True

    async def join(self) -> None:
        """Wait until every block written behind so far is on disk (or given up)."""
        await self.jobs.join()
