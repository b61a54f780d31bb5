"""How a blob is cut into blocks, and what a store counts of them.

Every part of the read engine (the store, its downloads, its verification, its small reads)
cuts blobs at the same block size; :class:`Blocks` is that size and the arithmetic done with
it, written once. :class:`CacheStats` is where the parts count what they served and did, for
a mount's statistics and its metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from modelkitfs.cache import BlockCache
from modelkitfs.primitives.buffers import Buffer


@dataclass(frozen=True)
class Blocks:
    size: int  # bytes of a block; a blob's last block may be shorter

    def length(self, blob_size: int, index: int) -> int:
        """Bytes of block ``index`` of a blob of ``blob_size`` bytes."""
        return min(self.size, blob_size - index * self.size)

    def count(self, blob_size: int) -> int:
        """Blocks of a blob of ``blob_size`` bytes (an empty blob has one, empty)."""
        return max(1, -(-blob_size // self.size))

    def spans(self, offset: int, end: int) -> list[tuple[int, tuple[int, int]]]:
        """The blocks bytes ``[offset, end)`` lie in, and where in each."""
        bs = self.size
        return [
            (i, (max(offset - i * bs, 0), min(end - i * bs, bs)))
            for i in range(offset // bs, (end - 1) // bs + 1)
        ]


def read_cached(
    cache: BlockCache,
    blocks: Blocks,
    digest: str,
    size: int,
    indexes: Iterable[int],
    keep: bool = False,
) -> dict[int, Buffer]:
    """The blocks of ``indexes`` found in ``cache`` (of a blob of ``size`` bytes); ``keep``:
    their pages left in the page cache. Blocks: run it in a worker thread."""
    found: dict[int, Buffer] = {}
    for index in indexes:
        length = blocks.length(size, index)
        data = cache.read_block(digest, blocks.size, index, length, keep=keep)
        if data is not None:
            found[index] = data
    return found


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    downloaded_blocks: int = 0
    write_failures: int = 0
    verified_blobs: int = 0
    corrupt_blobs: int = 0
