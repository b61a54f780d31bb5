"""How one file of the cache is laid out, read and written.

A block file is the block's bytes followed by a 4-byte checksum: the low 32 bits of XXH3-64
(CRC-32 in files of earlier versions, still accepted). On warm reads CRC-32 took a sixth of the
daemon's CPU, 0.25 ms per MiB against 0.02.

Every file is written under a temporary name in its final directory, then renamed into place, so
a reader sees a whole file or none, even if the writer is killed. A temporary name carries the
id of the process that writes it (``.tmp-<owner>-<random>``); that process holds a lock named
after the id while it lives, so eviction tells a file whose writer is gone from one being
written, whatever the clock says (see :mod:`modelkitfs.blobs.locks`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import tempfile
import zlib
from pathlib import Path

import xxhash

Buffer = bytes | bytearray | memoryview

CHECKSUM = 4  # bytes of checksum after a block's data
TEMP_PREFIX = ".tmp-"


def checksum(data: Buffer) -> bytes:
    return (xxhash.xxh3_64_intdigest(data) & 0xFFFFFFFF).to_bytes(CHECKSUM, "big")


def checksum_matches(data: memoryview, trailer: Buffer) -> bool:
    return checksum(data) == trailer or zlib.crc32(data).to_bytes(CHECKSUM, "big") == trailer


def temp_owner(name: str) -> str | None:
    """The writer id in a temporary file's name; None for a name without one (written by an
    earlier version) or for a file that is not temporary."""
    if not name.startswith(TEMP_PREFIX):
        return None
    owner, dash, _ = name[len(TEMP_PREFIX) :].partition("-")
    return owner if dash and owner.startswith("w") else None


def read_into_buffer(path: Path, nowait: bool = False) -> tuple[bytearray, float] | None:
    """A file's bytes and modification time; None when absent. With ``nowait``, raises
    ``BlockingIOError`` unless every byte is in the page cache. The file's pages are dropped
    once read: the FUSE file's pages keep what a mount served (see write_back_and_drop)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        buffer = bytearray(info.st_size)
        if nowait:
            if os.preadv(fd, [buffer], 0, os.RWF_NOWAIT) != info.st_size:
                raise BlockingIOError(errno.EAGAIN, "partly in the page cache", str(path))
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return buffer, info.st_mtime
        with memoryview(buffer) as view:
            got = 0
            while got < len(view) and (n := os.preadv(fd, [view[got:]], got)):
                got += n
        del buffer[got:]
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return buffer, info.st_mtime
    finally:
        os.close(fd)


def read_file(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_atomic(path: Path, *parts: Buffer, owner: str) -> None:
    """Write ``parts`` to ``path`` through a temporary file named after ``owner`` (the id of
    this process's writer lock, which must be held)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{owner}-")
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[f.write(view) :]
            write_back_and_drop(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_libc = ctypes.CDLL(None, use_errno=True)
_WRITE_AND_WAIT = 1 | 2 | 4  # SYNC_FILE_RANGE_WAIT_BEFORE | _WRITE | _WAIT_AFTER


def write_back_and_drop(fd: int) -> None:
    """Write the file's pages to disk now and drop them from the page cache.

    Every byte a mount serves is kept by the kernel in the FUSE file's pages; the cache
    file's pages would hold it a second time (README, Speed). Written back first,
    the pages are clean and the advice drops them. Only the data is written, not the
    metadata (``sync_file_range``, no journal commit): a torn block is caught by its
    checksum, as before. Written from the write-behind threads, never on a read's path."""
    if _libc.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), _WRITE_AND_WAIT) != 0:
        os.fdatasync(fd)  # a file system without sync_file_range
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
