"""What the block store needs from a cache of blocks: a protocol, as Mountpoint-s3's
``DataCache`` trait.

Two caches implement it: :class:`~modelkitfs.cache.disk.DiskCache`, shared by every process
on the machine through a folder (its download claims and pins are kernel locks), and
:class:`~modelkitfs.cache.memory.MemoryCache`, this process's alone, bounded, for tests and for
running where no folder can be written. Blocks are named by blob digest, block size and index;
sidecar files ("meta") hold what is derived from a blob (a tar index, a verification record).

Methods block: the store calls them from worker threads, except ``pin``, ``unpin`` and
``cached_blocks`` (a ``stat`` per block, which the kernel answers from its caches: a trip to a
worker thread for each block a cold read looks for costs more).
"""

from __future__ import annotations

from typing import Protocol

from modelkitfs.cache.blockfile import Buffer
from modelkitfs.cache.pages import PageSpan


class BlockClaim(Protocol):
    """Download claims on blocks of one blob: others wait for them rather than download."""

    held: set[int]
    overtaken: set[int]  # held blocks claimed elsewhere too (that claim was held too long)

    def release(self, index: int) -> None: ...

    def release_from(self, first: int) -> None:
        """Release every held block from ``first`` on."""
        ...

    def close(self) -> None: ...


class BlockCache(Protocol):
    @property
    def name(self) -> str:
        """The cache, for messages (its folder)."""
        ...

    @property
    def writable(self) -> bool:
        """False while writes would fail (a read-only or full disk): skip them meanwhile."""
        ...

    def cannot_write(self) -> str | None:
        """Why the cache cannot be written now and what to do ("it cannot be written (...);
        ..."), for messages; None when it can."""
        ...

    def read_block(
        self, digest: str, block_size: int, index: int, expected_size: int, *, keep: bool = False
    ) -> Buffer | None:
        """The block's bytes, or None when absent (or damaged: then it is dropped). ``keep``:
        read through the page cache and leave its pages there, for a small reader who will
        come back for other pages of it (:meth:`read_pages`)."""
        ...

    def read_pages(self, pages: PageSpan, nowait: bool = False) -> bytes | None:
        """Bytes ``pages.span`` of a block checked before, read by the pages holding them,
        each checked against ``pages.sums`` (:mod:`~modelkitfs.cache.pages`); None when absent
        or a page differs. ``nowait``: called on the event loop; raise
        BlockingIOError rather than wait for the disk."""
        ...

    def cached_blocks(self, digest: str, block_size: int, first: int, last: int) -> set[int]:
        """Which of blocks ``first`` to ``last`` are cached (not read, nor checked)."""
        ...

    def write_block(self, digest: str, block_size: int, index: int, data: Buffer) -> None:
        """Raises OSError when the cache cannot be written."""
        ...

    def remove_blocks(self, digest: str) -> None:
        """Forget every block of ``digest`` (its bytes proved wrong)."""
        ...

    def claim_run(
        self, digest: str, block_size: int, first: int, last: int, overtake: bool = False
    ) -> BlockClaim | None:
        """Claims on blocks ``first``, ``first + 1``... up to ``last``, stopping at one claimed
        elsewhere or cached; None when block ``first`` is cached; none held while it is
        claimed elsewhere (the caller waits and asks again). ``overtake``: blocks claimed
        elsewhere are held too, in ``overtaken`` (stopping at a cached one only)."""
        ...

    def pin(self, digest: str, block_size: int, index: int) -> None:
        """The block is in use here: eviction (by any process) spares it until :meth:`unpin`."""
        ...

    def unpin(self, digest: str, block_size: int, index: int) -> None: ...

    def read_meta(self, digest: str, name: str) -> bytes | None: ...

    def write_meta(self, digest: str, name: str, data: bytes) -> None:
        """Raises OSError when the cache cannot be written."""
        ...
