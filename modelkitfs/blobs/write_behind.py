"""Blocks written to the cache behind the reader that downloaded them.

Writing a block file costs about a millisecond of CPU per MiB (the checksum, the copy, the
rename), which a reader need not wait for: the block is in memory at once, and its write runs
as a background job of the session (:mod:`~modelkitfs.blobs.jobs`). At most ``WRITE_BEHIND``
blocks wait for their write, then the next download waits. The block's download claim is
released once it is on disk, so that other processes wait for the file rather than download
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
        self._slots = trio.Semaphore(WRITE_BEHIND)

    async def put(
        self,
        digest: str,
        index: int,
        data: Buffer,
        *,
        claim: BlockClaim | None = None,
        size: int | None = None,
        behind: bool = True,
    ) -> None:
        """Keep a block in memory at once and on disk when it can; with ``behind`` (the
        default) the disk write happens in the background. ``claim``, the block's download
        claim, is released once the block is on disk; with the blob's ``size``, a written block
        counts towards verifying the blob."""
        self.store.memory.put((digest, index), data)
        if not behind:
            try:
                await self.write(digest, index, data)
            finally:
                if claim is not None:
                    claim.release(index)
            return
        await self._slots.acquire()
        self.jobs.start(self._behind, digest, index, data, claim, size)

    async def _behind(
        self, digest: str, index: int, data: Buffer, claim: BlockClaim | None, size: int | None
    ) -> None:
        try:
            if await self.write(digest, index, data) and size is not None:
                self.store.verifier.seen(digest, size, index, data)
        finally:
            self._slots.release()
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
