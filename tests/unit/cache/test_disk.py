"""The disk cache: whole files or none, whatever happens to a writer. Download claims on a
cache that cannot be written (issue case 9): a read-only cache, or one out of inodes, failed
every download on its lock file, although cached blocks read fine. And what is a claim (issue
29, case 5): a write lock only, and one held too long is overtaken."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from modelkitfs.cache import DiskCache
from modelkitfs.cache.locks import range_lock
from modelkitfs.primitives.buffers import Buffer, aligned
from tests.support.tmpfs import small_fs

DIGEST = "sha256:" + "ab" * 32


def test_block_round_trip_and_layout(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    cache.write_block(DIGEST, 1024, 3, b"x" * 1024)
    assert cache.read_block(DIGEST, 1024, 3, 1024) == b"x" * 1024
    assert (
        cache.block_path(DIGEST, 1024, 3) == tmp_path / "blocks/sha256/ab" / ("ab" * 32) / "1024/3"
    )
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_leftovers_of_a_killed_writer_are_never_trusted(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    path = cache.block_path(DIGEST, 1024, 0)
    path.parent.mkdir(parents=True)
    (path.parent / ".tmp-abandoned").write_bytes(b"half")  # killed before its rename
    assert cache.read_block(DIGEST, 1024, 0, 1024) is None
    path.write_bytes(b"y" * 100)  # truncated by something outside our control
    assert cache.read_block(DIGEST, 1024, 0, 1024) is None


def test_meta_round_trip(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    assert cache.read_meta(DIGEST, "tar-index.v1.json") is None
    cache.write_meta(DIGEST, "tar-index.v1.json", b"{}")
    assert cache.read_meta(DIGEST, "tar-index.v1.json") == b"{}"


def test_download_locks_cover_runs_and_exclude_other_claims(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    cache.write_block(DIGEST, 1024, 6, b"z" * 1024)
    first = cache.claim_run(DIGEST, 1024, 0, 9)
    assert first is not None and first.held == set(range(6))  # stops at the cached block
    assert cache.claim_run(DIGEST, 1024, 2, 4).held == set()  # held elsewhere: wait
    partial = cache.claim_run(DIGEST, 1024, 7, 9)  # beyond the cached block: free
    assert partial is not None and partial.held == {7, 8, 9}
    assert cache.claim_run(DIGEST, 1024, 6, 9) is None  # cached: nothing to download
    first.release(3)
    again = cache.claim_run(DIGEST, 1024, 3, 5)
    assert again is not None and again.held == {3}  # 4 and 5 are still held
    for index in (0, 1, 2, 4, 5):
        first.release(index)
    assert first.fd == -1  # closed with its last lock
    assert cache.claim_run(DIGEST, 1024, 4, 5).held == {4, 5}


def test_the_cache_is_its_owners_alone(tmp_path: Path) -> None:
    """Issue 29, case 5: lock files were 0644 in folders 0755, so any user could open them
    and lock what the cache's downloads wait for."""
    root = tmp_path / "new" / "cache"
    cache = DiskCache(root)
    cache.write_block(DIGEST, 1024, 3, b"x" * 1024)
    cache.write_meta(DIGEST, "tar-index.v1.json", b"{}")
    claim = cache.claim_run(DIGEST, 1024, 0, 1)
    assert claim is not None
    cache.pin("sha256:" + "ef" * 32, 1024, 0)
    folders = [root.parent, root, *(p for p in root.rglob("*") if p.is_dir())]
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {p.relative_to(root).parts[0] for p in files} == {"blocks", "meta", "locks"}
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {"0o700"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}
    claim.close()
    cache.pins.close()


def test_blocks_of_earlier_versions_with_crc32_are_still_read(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    path = cache.block_path(DIGEST, 1024, 0)
    path.parent.mkdir(parents=True)
    data = bytes(range(256)) * 4
    path.write_bytes(data + zlib.crc32(data).to_bytes(4, "big"))
    assert cache.read_block(DIGEST, 1024, 0, 1024) == data
    path.write_bytes(data + (zlib.crc32(data) ^ 1).to_bytes(4, "big"))
    assert cache.read_block(DIGEST, 1024, 0, 1024) is None
    assert not path.exists()  # damaged: deleted, to be downloaded again


def in_page_cache(path: Path) -> bool:
    """Whether any page of ``path`` is in the page cache: mincore(2) of a private map of it
    (a read that must not wait, RWF_NOWAIT, was seen to succeed on pages not there)."""
    size = path.stat().st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        pages = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
        start = ctypes.c_char.from_buffer(mapped)
        try:
            if LIBC.mincore(ctypes.byref(start), ctypes.c_size_t(size), pages) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del start
        return any(page & 1 for page in pages)


LIBC = ctypes.CDLL(None, use_errno=True)


def drop_pages(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def block_bytes(size: int, aligned_buffer: bool) -> Buffer:
    """A block as downloads hold it (an aligned buffer: written by direct I/O) or not."""
    data = os.urandom(size)
    if not aligned_buffer:
        return data
    buffer = aligned(size)
    buffer[:] = data
    return buffer


@pytest.mark.parametrize("size", [1 << 20, (1 << 20) - 100, 100])
@pytest.mark.parametrize("aligned_buffer", [True, False])
def test_blocks_leave_the_page_cache_once_written_and_once_read(
    tmp_path: Path, size: int, aligned_buffer: bool
) -> None:
    """A mount's reads are kept by the kernel in the FUSE file's pages: the cache file's own
    pages would hold every byte a second time. Written from an aligned buffer by direct I/O
    (by DMA) and read back by direct I/O, the bytes never enter the page cache at all."""
    cache = DiskCache(tmp_path)
    data = block_bytes(size, aligned_buffer)
    probe = tmp_path / "probe"
    probe.write_bytes(data)
    drop_pages(probe)
    if in_page_cache(probe):
        pytest.skip("this file system keeps every page in memory (tmpfs)")
    cache.write_block(DIGEST, 1 << 20, 0, data)
    path = cache.block_path(DIGEST, 1 << 20, 0)
    assert not in_page_cache(path)
    assert cache.read_block(DIGEST, 1 << 20, 0, size) == data
    assert not in_page_cache(path)


def test_a_block_read_to_be_kept_leaves_its_pages_in_the_page_cache(tmp_path: Path) -> None:
    """A small reader's block: its other pages are read next, from the page cache."""
    cache = DiskCache(tmp_path)
    data = block_bytes(1 << 20, aligned_buffer=True)
    cache.write_block(DIGEST, 1 << 20, 0, data)
    path = cache.block_path(DIGEST, 1 << 20, 0)
    drop_pages(path)
    if in_page_cache(path):
        pytest.skip("this file system keeps every page in memory (tmpfs)")
    assert cache.read_block(DIGEST, 1 << 20, 0, len(data), keep=True) == data
    assert in_page_cache(path)


def test_a_file_system_without_direct_io_is_read_and_written_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = os.open
    refused = []

    def refuse_direct(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if flags & os.O_DIRECT:
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return opened(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", refuse_direct)
    cache = DiskCache(tmp_path)
    data = block_bytes((1 << 20) - 100, aligned_buffer=True)
    cache.write_block(DIGEST, 1 << 20, 0, data)
    assert cache.read_block(DIGEST, 1 << 20, 0, len(data)) == data
    assert len(refused) == 2  # the write, then the read


CLAIMED = "sha256:" + "cd" * 32  # a blob of the download-claim tests


def test_a_read_only_cache_still_lets_a_download_claim_its_blocks(tmp_path: Path) -> None:
    """Case 9: the lock file cannot be created, yet the claim holds what is not cached (for
    this process only) instead of raising; cached blocks still read."""
    with small_fs(tmp_path / "fs", "4m") as fs:
        cache = DiskCache(fs.path / "cache")
        cache.write_block(CLAIMED, 1024, 2, b"c" * 1024)
        fs.remount("ro")
        locks = cache.claim_run(CLAIMED, 1024, 0, 5)
        assert locks is not None and locks.held == {0, 1}  # stops at the cached block
        assert cache.claim_run(CLAIMED, 1024, 2, 3) is None
        assert cache.read_block(CLAIMED, 1024, 2, 1024) == b"c" * 1024
        locks.release(0)
        locks.release(1)


def test_a_cache_out_of_inodes_still_lets_a_download_claim_its_blocks(tmp_path: Path) -> None:
    """Case 9, the other fault: no inode for the lock file."""
    with small_fs(tmp_path / "fs", "4m", inodes=4) as fs:
        cache = DiskCache(fs.path)
        for i in range(10):  # use up the inodes
            try:
                (fs.path / f"filler{i}").write_bytes(b"")
            except OSError:
                break
        locks = cache.claim_run(CLAIMED, 1024, 0, 2)
        assert locks is not None and locks.held == {0, 1, 2}


def test_a_read_lock_is_not_a_claim(tmp_path: Path) -> None:
    """Any process that can read a lock file can read-lock it, for ever: a uid 65534 did,
    and every download of the blob waited on it."""
    cache = DiskCache(tmp_path)
    first = cache.claim_run(CLAIMED, 1024, 0, 0)  # creates the lock file
    assert first is not None
    first.release(0)
    reader = os.open(cache.lock_path(CLAIMED, 1024), os.O_RDONLY)
    try:
        assert range_lock(reader, fcntl.F_RDLCK, 0, 4)
        locks = cache.claim_run(CLAIMED, 1024, 0, 5)
        assert locks is not None and locks.held == set(range(6)) and not locks.overtaken
        assert cache.claim_run(CLAIMED, 1024, 4, 5).held == set()  # 4 and 5 are locked here
        locks.close()
    finally:
        os.close(reader)


def test_an_overtaking_claim_takes_blocks_claimed_elsewhere_and_leaves_their_claims(
    tmp_path: Path,
) -> None:
    cache = DiskCache(tmp_path)
    stopped = cache.claim_run(CLAIMED, 1024, 0, 3)  # a process stopped while downloading
    assert stopped is not None and stopped.held == {0, 1, 2, 3}
    cache.write_block(CLAIMED, 1024, 2, b"c" * 1024)
    assert cache.claim_run(CLAIMED, 1024, 0, 3).held == set()
    taken = cache.claim_run(CLAIMED, 1024, 0, 3, overtake=True)
    assert taken is not None and taken.held == taken.overtaken == {0, 1}  # to the cached one
    taken.release(0)
    taken.release(1)
    assert cache.claim_run(CLAIMED, 1024, 0, 1).held == set()  # still the stopped one's
    assert cache.claim_run(CLAIMED, 1024, 2, 3, overtake=True) is None  # cached
    stopped.close()
