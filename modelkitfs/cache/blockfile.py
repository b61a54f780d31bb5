"""How one file of the cache is laid out, read and written.

A block file is the block's bytes followed by a 4-byte checksum: the low 32 bits of XXH3-64
(CRC-32 in files of earlier versions, still accepted). On warm reads CRC-32 took a sixth of the
daemon's CPU, 0.25 ms per MiB against 0.02.

Every file is written under a temporary name in its final directory, then renamed into place, so
a reader sees a whole file or none, even if the writer is killed. A temporary name carries the
id of the process that writes it (``.tmp-<owner>-<random>``); that process holds a lock named
after the id while it lives, so eviction tells a file whose writer is gone from one being
written, whatever the clock says (see :mod:`modelkitfs.cache.locks`).

Files are created 0600 and folders 0700: the cache is its owner's alone. Nobody else reads its
blocks, learns which blobs it holds, or opens its lock files to stall its downloads (issue 29).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import zlib
from pathlib import Path

import xxhash

from modelkitfs.primitives.buffers import ALIGN, Buffer, aligned, is_aligned

CHECKSUM = 4  # bytes of checksum after a block's data
TEMP_PREFIX = ".tmp-"
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
FILE_MODE = 0o600
FOLDER_MODE = 0o700


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


def make_folders(path: Path) -> None:
    """``path`` and its missing parents, each created ``FOLDER_MODE`` (``Path.mkdir`` gives
    the parents it makes the default mode)."""
    try:
        path.mkdir(FOLDER_MODE)
    except FileNotFoundError:
        make_folders(path.parent)
        make_folders(path)
    except FileExistsError:
        if not path.is_dir():
            raise


def _open_direct(path: Path | str, flags: int, mode: int = FILE_MODE) -> tuple[int, bool]:
    """``path`` opened for direct I/O, or for buffered I/O where the file system has none
    (then True's place says False)."""
    try:
        return os.open(path, flags | os.O_DIRECT, mode), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return os.open(path, flags, mode), False


def read_into_buffer(path: Path, *, keep: bool = False) -> tuple[memoryview, float] | None:
    """A file's bytes and modification time; None when absent. Read with direct I/O (by DMA,
    not through the page cache: the FUSE file's pages keep what a mount served); where the
    file system has none, read through the page cache and its pages dropped once read.
    ``keep``: read through the page cache, its pages left there."""
    try:
        if keep:
            fd, direct = os.open(path, os.O_RDONLY), False
        else:
            fd, direct = _open_direct(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        # Direct reads are whole pages; only the bytes read are kept, so no zeroing.
        buffer = aligned(-(-info.st_size // ALIGN) * ALIGN, zeroed=False)
        got = 0
        while got < info.st_size and (n := os.preadv(fd, [buffer[got:]], got)):
            got += n
        if not direct and not keep:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return buffer[: min(got, info.st_size)], info.st_mtime
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
    this process's writer lock, which must be held). A first part that is aligned
    (:func:`aligned`) is written with direct I/O up to its last whole page, by DMA rather than
    copied into the page cache; the rest is written through the page cache, written back
    and dropped (:func:`write_back_and_drop`)."""
    make_folders(path.parent)
    tmp = path.parent / f"{TEMP_PREFIX}{owner}-{secrets.token_hex(4)}"
    if parts and is_aligned(parts[0]):
        fd, direct = _open_direct(tmp, CREATE_FLAGS)
    else:
        fd, direct = os.open(tmp, CREATE_FLAGS, FILE_MODE), False
    try:
        rest = list(parts)
        if direct:
            with memoryview(rest[0]) as first:
                whole = len(first) // ALIGN * ALIGN
                _write_all(fd, first[:whole])
                rest[0] = bytes(first[whole:])
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        for part in rest:
            _write_all(fd, part)
        write_back_and_drop(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: Buffer) -> None:
    with memoryview(data) as view:
        while view:
            view = view[os.write(fd, view) :]


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
