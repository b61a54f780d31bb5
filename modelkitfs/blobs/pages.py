"""Small reads of blocks checked before: just the pages they need, through the page cache.

A read of a few KiB out of a block that has left memory used to read the whole block file from
disk by direct I/O and hash all of it: 256 times the bytes of a 4 KiB read, and 0.7 ms of the
event loop (issue 30). Now a block is still checked whole (its checksum) before any of its
bytes is first served in this process, and the XXH3 of each of its 4 KiB pages is remembered
then (1 KiB per 1 MiB block, for the ``MAX_BLOCKS`` most recently used); a later read of part
of it reads only its pages from the block file, through the page cache (small reads are where
a page cached twice costs little), and serves them only if every page matches its sum
(:mod:`modelkitfs.cache.pages` says why sums of pages, and how they are read).
"""

from __future__ import annotations

from collections import OrderedDict

import trio

from modelkitfs.blobs.blocks import Blocks, CacheStats
from modelkitfs.blobs.flights import Flights
from modelkitfs.cache import BlockCache, PageSpan, Sums, page_sums
from modelkitfs.primitives.buffers import Buffer

MAX_BLOCKS = 16384  # 16 MiB of sums: 16 GiB of 1 MiB blocks


class CheckedPages:
    """The page sums of blocks checked in this process, the most recently used kept."""

    def __init__(self, max_blocks: int = MAX_BLOCKS) -> None:
        self.max_blocks = max_blocks
        self._sums: OrderedDict[tuple[str, int], Sums] = OrderedDict()

    def get(self, key: tuple[str, int]) -> Sums | None:
        sums = self._sums.get(key)
        if sums is not None:
            self._sums.move_to_end(key)
        return sums

    def remember(self, key: tuple[str, int], block: Buffer) -> None:
        """Note ``block``, whose bytes are right (checked, or just downloaded)."""
        if key in self._sums:
            return
        self._sums[key] = page_sums(block)
        if len(self._sums) > self.max_blocks:
            self._sums.popitem(last=False)

    def forget(self, digest: str) -> None:
        for key in [k for k in self._sums if k[0] == digest]:
            del self._sums[key]


class SmallReads:
    """Small reads of a store's blocks by their pages, once each block has been checked."""

    def __init__(
        self, cache: BlockCache, flights: Flights, blocks: Blocks, stats: CacheStats
    ) -> None:
        self.cache = cache
        self.flights = flights  # a block on its way is taken whole
        self.blocks = blocks
        self.stats = stats
        self.checked = CheckedPages()

    def remember(self, key: tuple[str, int], block: Buffer) -> None:
        self.checked.remember(key, block)

    def now(self, digest: str, size: int, index: int, span: tuple[int, int]) -> bytes | None:
        """Bytes ``span`` of the block if its pages are in the page cache; else None."""
        if (pages := self._pages(digest, size, index, span)) is None:
            return None
        try:
            return self._counted(self.cache.read_pages(pages, nowait=True))
        except BlockingIOError:
            return None

    async def read(self, digest: str, size: int, index: int, span: tuple[int, int]) -> bytes | None:
        """Bytes ``span`` of the block, read by its pages in a worker thread; None when it has
        not been checked (or is on its way), or its file is gone or damaged."""
        if (pages := self._pages(digest, size, index, span)) is None:
            return None
        return self._counted(await trio.to_thread.run_sync(self.cache.read_pages, pages))

    def _pages(self, digest: str, size: int, index: int, span: tuple[int, int]) -> PageSpan | None:
        """What the cache reads the pages of; None for a block not checked, or on its way (it
        may have proved wrong: its new bytes are taken whole)."""
        key = (digest, index)
        if key in self.flights or (sums := self.checked.get(key)) is None:
            return None
        length = self.blocks.length(size, index)
        return PageSpan(digest, self.blocks.size, index, span, length, sums)

    def _counted(self, data: bytes | None) -> bytes | None:
        if data is not None:
            self.stats.disk_hits += 1
        return data
