"""Small reads of blocks checked before: just the pages they need, through the page cache.

A read of a few KiB out of a block that has left memory used to read the whole block file from
disk by direct I/O and hash all of it: 256 times the bytes of a 4 KiB read, and 0.7 ms of the
event loop (issue 30). Now a block is still checked whole (its checksum) before any of its
bytes is first served in this process, and the XXH3 of each of its 4 KiB pages is remembered
then (1 KiB per 1 MiB block, for the ``MAX_BLOCKS`` most recently used); a later read of part
of it reads only its pages from the block file, through the page cache (small reads are where
a page cached twice costs little), and serves them only if every page matches its sum.

Why sums of pages rather than the file's identity (inode, size, times) remembered at the
check: identity catches a file written again through the file system, but not one damaged
beneath it (the disk, a file system without data checksums), and a block written again may
reuse an inode number. A page whose sum differs is never served: the read falls back to the
whole block, whose checksum is checked again (a damaged file is then dropped and downloaded
again). A file that is gone (evicted by another process) falls back the same way; one evicted
after it was opened is read from the open descriptor, whose bytes are checked all the same.
"""

from __future__ import annotations

import os
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING

import trio
import xxhash

from modelkitfs.primitives.buffers import Buffer

if TYPE_CHECKING:
    from modelkitfs.blobs.store import BlobStore

PAGE = 4096
KEPT_OPEN = 16  # block files the event loop keeps open
LARGE_SPAN = 256 * 1024  # read for a push into the page cache: not kept there twice
MAX_BLOCKS = 16384  # 16 MiB of sums: 16 GiB of 1 MiB blocks
_LOW32 = 0xFFFFFFFF
_xxh3 = xxhash.xxh3_64_intdigest

Sums = array  # of 'I': the low 32 bits of each page's XXH3-64


def page_sums(block: Buffer) -> Sums:
    """The sum of each page of ``block`` (its last page may be short)."""
    view = memoryview(block)
    return array("I", [_xxh3(view[at : at + PAGE]) & _LOW32 for at in range(0, len(view), PAGE)])


def checked_span(data: Buffer, first_page: int, start: int, stop: int, sums: Sums) -> bytes | None:
    """Bytes ``[start, stop)`` of a block out of ``data``, its pages from ``first_page`` on
    (the last one may be short: the block's end); None unless every page matches its sum."""
    view = memoryview(data)
    pages = -(-len(view) // PAGE)
    if first_page + pages > len(sums) or first_page * PAGE + len(view) < stop:
        return None
    for page in range(pages):
        if _xxh3(view[page * PAGE : (page + 1) * PAGE]) & _LOW32 != sums[first_page + page]:
            return None
    base = first_page * PAGE
    return bytes(view[start - base : stop - base])


def read_span(
    path: str, start: int, stop: int, length: int, sums: Sums, *, nowait: bool = False
) -> bytes | None:
    """Bytes ``[start, stop)`` of the block file at ``path`` (a block of ``length`` bytes),
    read by whole pages and each checked; None when the file is absent or a page differs.
    ``nowait``: only from the page cache, else :class:`BlockingIOError` (on the event loop;
    the read it would have waited for is under way then)."""
    first, last = start // PAGE, (stop - 1) // PAGE
    span = min((last + 1) * PAGE, length) - first * PAGE
    buffer = bytearray(span)
    if nowait:
        if (fd := _kept_open(path)) is None:
            return None
        got = os.preadv(fd, [buffer], first * PAGE, os.RWF_NOWAIT)
    else:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # the pages asked for, no more...
            got = os.preadv(fd, [buffer], first * PAGE)
            if span < LARGE_SPAN:  # ...now; the rest of the block (the files, the pages
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)  # around: read next) after
            else:  # read for a push into the page cache: not kept there twice
                os.posix_fadvise(fd, first * PAGE, span, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if got < span:
        if nowait:  # part of it in the page cache only
            raise BlockingIOError
        return None  # a file shorter than its block: damaged
    return checked_span(buffer, first, start, stop, sums)


_open: OrderedDict[str, int] = OrderedDict()  # path -> descriptor, the event loop's only


def _kept_open(path: str) -> int | None:
    """A descriptor of block file ``path``, kept open for the event loop's reads from the page
    cache (an open per small read took a tenth of the loop); None when the file is absent. A
    file evicted or written again meanwhile is read as it was: its pages are checked all the
    same, and a block's bytes never change."""
    if (fd := _open.get(path)) is not None:
        _open.move_to_end(path)
        return fd
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    _open[path] = fd
    if len(_open) > KEPT_OPEN:
        os.close(_open.popitem(last=False)[1])
    return fd


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

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.checked = CheckedPages()

    def remember(self, key: tuple[str, int], block: Buffer) -> None:
        self.checked.remember(key, block)

    def now(self, digest: str, size: int, index: int, span: tuple[int, int]) -> bytes | None:
        """Bytes ``span`` of the block if its pages are in the page cache; else None."""
        if (args := self._args(digest, size, index, span)) is None:
            return None
        try:
            return self._counted(self.store.cache.read_pages(*args, nowait=True))
        except BlockingIOError:
            return None

    async def read(self, digest: str, size: int, index: int, span: tuple[int, int]) -> bytes | None:
        """Bytes ``span`` of the block, read by its pages in a worker thread; None when it has
        not been checked (or is on its way), or its file is gone or damaged."""
        if (args := self._args(digest, size, index, span)) is None:
            return None
        return self._counted(await trio.to_thread.run_sync(self.store.cache.read_pages, *args))

    def _args(
        self, digest: str, size: int, index: int, span: tuple[int, int]
    ) -> tuple[str, int, int, tuple[int, int], int, Sums] | None:
        """What the cache reads the pages with; None for a block not checked, or on its way
        (it may have proved wrong: its new bytes are taken whole)."""
        store, key = self.store, (digest, index)
        if key in store.flights or (sums := self.checked.get(key)) is None:
            return None
        return digest, store.block_size, index, span, store.block_len(size, index), sums

    def _counted(self, data: bytes | None) -> bytes | None:
        if data is not None:
            self.store.stats.disk_hits += 1
        return data
