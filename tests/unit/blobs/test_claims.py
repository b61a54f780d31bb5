"""Download claims on a cache that cannot be written (issue case 9): a read-only cache, or one
out of inodes, failed every download on its lock file, although cached blocks read fine."""

from __future__ import annotations

from pathlib import Path

from modelkitfs.blobs import DiskCache
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
