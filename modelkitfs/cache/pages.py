"""A block's bytes read by the pages holding them, each checked against its sum.

A block is checked whole (its checksum) when it is first read; the XXH3 of each of its 4 KiB
pages can be taken then (:func:`page_sums`). A later small read of it reads only the pages it
needs from the block file, through the page cache, and serves them only if every page matches
its sum (:func:`read_span`; :func:`checked_span` for bytes already in memory). Which blocks
have been checked, and when a read may go by pages, is the reader's business
(:mod:`modelkitfs.blobs.pages`); here is only how pages are read and checked.

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
from dataclasses import dataclass

import xxhash

from modelkitfs.primitives.buffers import Buffer

PAGE = 4096
KEPT_OPEN = 16  # block files the event loop keeps open
LARGE_SPAN = 256 * 1024  # read for a push into the page cache: not kept there twice
_LOW32 = 0xFFFFFFFF
_xxh3 = xxhash.xxh3_64_intdigest

Sums = array  # of 'I': the low 32 bits of each page's XXH3-64


@dataclass(frozen=True)
class PageSpan:
    """A read of bytes ``span`` of block ``index`` (``length`` bytes) of ``digest`` cut at
    ``block_size``, by its pages, each checked against ``sums``."""

    digest: str
    block_size: int
    index: int
    span: tuple[int, int]
    length: int
    sums: Sums


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
