"""Download claims on a cache that cannot be written (issue case 9): a read-only cache, or one
out of inodes, failed every download on its lock file, although cached blocks read fine. And
what is a claim (issue 29, case 5): a write lock only, and one held too long is overtaken."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from modelkitfs.blobs import DiskCache
from modelkitfs.blobs.locks import range_lock
from tests.support.tmpfs import small_fs

DIGEST = "sha256:" + "cd" * 32


def test_a_read_only_cache_still_lets_a_download_claim_its_blocks(tmp_path: Path) -> None:
    """Case 9: the lock file cannot be created, yet the claim holds what is not cached (for
    this process only) instead of raising; cached blocks still read."""
    with small_fs(tmp_path / "fs", "4m") as fs:
        cache = DiskCache(fs.path / "cache")
        cache.write_block(DIGEST, 1024, 2, b"c" * 1024)
        fs.remount("ro")
        locks = cache.claim_run(DIGEST, 1024, 0, 5)
        assert locks is not None and locks.held == {0, 1}  # stops at the cached block
        assert cache.claim_run(DIGEST, 1024, 2, 3) is None
        assert cache.read_block(DIGEST, 1024, 2, 1024) == b"c" * 1024
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
        locks = cache.claim_run(DIGEST, 1024, 0, 2)
        assert locks is not None and locks.held == {0, 1, 2}


def test_a_read_lock_is_not_a_claim(tmp_path: Path) -> None:
    """Any process that can read a lock file can read-lock it, for ever: a uid 65534 did,
    and every download of the blob waited on it."""
    cache = DiskCache(tmp_path)
    first = cache.claim_run(DIGEST, 1024, 0, 0)  # creates the lock file
    assert first is not None
    first.release(0)
    reader = os.open(cache.lock_path(DIGEST, 1024), os.O_RDONLY)
    try:
        assert range_lock(reader, fcntl.F_RDLCK, 0, 4)
        locks = cache.claim_run(DIGEST, 1024, 0, 5)
        assert locks is not None and locks.held == set(range(6)) and not locks.overtaken
        assert cache.claim_run(DIGEST, 1024, 4, 5).held == set()  # 4 and 5 are locked here
        locks.close()
    finally:
        os.close(reader)


def test_an_overtaking_claim_takes_blocks_claimed_elsewhere_and_leaves_their_claims(
    tmp_path: Path,
) -> None:
    cache = DiskCache(tmp_path)
    stopped = cache.claim_run(DIGEST, 1024, 0, 3)  # a process stopped while downloading
    assert stopped is not None and stopped.held == {0, 1, 2, 3}
    cache.write_block(DIGEST, 1024, 2, b"c" * 1024)
    assert cache.claim_run(DIGEST, 1024, 0, 3).held == set()
    taken = cache.claim_run(DIGEST, 1024, 0, 3, overtake=True)
    assert taken is not None and taken.held == taken.overtaken == {0, 1}  # to the cached one
    taken.release(0)
    taken.release(1)
    assert cache.claim_run(DIGEST, 1024, 0, 1).held == set()  # still the stopped one's
    assert cache.claim_run(DIGEST, 1024, 2, 3, overtake=True) is None  # cached
    stopped.close()
