"""Keeping the shared cache within its size cap and the disk above its free-space floor.

Every process that writes blocks counts what it writes on top of what the cache held when it
started; past the cap, or when the disk runs low, it evicts the least recently used blocks (one
process at a time; the count is then taken again from the disk). Blocks in use are simply
downloaded again if evicted: eviction never fails a read.
"""

from __future__ import annotations

import logging
import re

import trio

from modelkitfs.blobs.cache import DiskCache
from modelkitfs.errors import ModelKitFSError

log = logging.getLogger(__name__)

MIN_FREE_FRACTION = 0.05
DEFAULT_MAX_FRACTION = 0.5  # of the file system the cache is on
FREE_CHECK_EVERY = 64 * 1024 * 1024  # bytes written between looks at the free space
PRUNE_ROUNDS = 3  # writes go on while a prune runs: look again, a few times at most
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``500M``, ``20G``, ``1.5T``, ``4096`` (bytes); K, M, G, T are powers of 1024."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ModelKitFSError(
            f"invalid size {text!r}: give a number with an optional K, M, G or T suffix (e.g. 20G)"
        )
    scale = 1024 ** " KMGT".index(match[2].upper() or " ")
    return int(float(match[1]) * scale)


class CacheBudget:
    """The size cap and free-space floor of one cache directory, shared by the stores of a
    process. ``max_bytes`` None means half of the file system."""

    def __init__(self, cache: DiskCache, max_bytes: int | None = None) -> None:
        self.cache = cache
        self.max_bytes = max_bytes
        self.min_free_bytes = 0
        self.usage: int | None = None  # None until start() has measured the cache
        self._unmeasured = 0
        self._written = 0  # in all, to tell what was written while a prune ran
        self._since_free_check = 0
        self._pruning = trio.Lock()

    async def start(self) -> None:
        """Take the cache's size from the disk (once, off the event loop). Meant to run in
        the background: a failure leaves the cache unbounded, with a warning."""
        try:
            await self._measure()
        except OSError as exc:
            log.warning("cannot measure cache %s (%s): not bounding it", self.cache.root, exc)

    async def _measure(self) -> None:
        free, total = await trio.to_thread.run_sync(self.cache.free_bytes)
        if self.max_bytes is None:
            self.max_bytes = int(total * DEFAULT_MAX_FRACTION)
        self.min_free_bytes = int(total * MIN_FREE_FRACTION)
        self.usage = await trio.to_thread.run_sync(self.cache.usage) + self._unmeasured
        log.info(
            "cache %s holds %d bytes (cap %d, keeping %d of %d free)",
            self.cache.root,
            self.usage,
            self.max_bytes,
            self.min_free_bytes,
            free,
        )
        if self.usage > self.max_bytes or free < self.min_free_bytes:
            await self.prune()

    async def wrote(self, nbytes: int) -> None:
        """Account for ``nbytes`` just written; evict when over the cap or the floor."""
        if self.usage is None or self.max_bytes is None:
            self._unmeasured += nbytes  # start() is still measuring
            return
        self.usage += nbytes
        self._written += nbytes
        self._since_free_check += nbytes
        if self.usage > self.max_bytes:
            await self.prune()
        elif self._since_free_check >= FREE_CHECK_EVERY:
            self._since_free_check = 0
            free, _ = await trio.to_thread.run_sync(self.cache.free_bytes)
            if free < self.min_free_bytes:
                await self.prune()

    async def prune(self) -> None:
        if self._pruning.locked():
            return  # one eviction at a time; it looks again if writes went on meanwhile
        async with self._pruning:
            for _ in range(PRUNE_ROUNDS):
                written_before = self._written
                self.usage = await trio.to_thread.run_sync(
                    self.cache.prune, self.max_bytes, self.min_free_bytes
                )
                self.usage += self._written - written_before
                if self.max_bytes is None or self.usage <= self.max_bytes:
                    return
