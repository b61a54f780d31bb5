"""Download locks, pins and process locks of the shared cache (issue cases 9 and 11)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from modelkitfs.blobs import DiskCache
from modelkitfs.blobs.locks import BlockPins, pinned_blocks, process_alive
from tests.tmpfs import small_fs

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
        assert cache.health.fault is not None and not cache.writable


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


def test_pins_are_seen_by_any_process_and_die_with_their_holder(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    path = cache.lock_path(DIGEST, 1024)
    pins = BlockPins()
    pins.pin(path, 3)
    pins.pin(path, 4)
    pins.pin(path, 9)
    assert pinned_blocks(path, list(range(12))) == {3, 4, 9}
    pins.unpin(path, 4)
    assert pinned_blocks(path, list(range(12))) == {3, 9}
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from modelkitfs.blobs.locks import "
            "pinned_blocks; print(sorted(pinned_blocks(Path(sys.argv[1]), list(range(12)))))",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "[3, 9]"
    pins.close()
    assert pinned_blocks(path, list(range(12))) == set()


def test_pins_take_a_read_only_descriptor(tmp_path: Path) -> None:
    """Pins never hold a file open for writing: the cache's file system can still be
    remounted read-only under a mount that has blocks in use."""
    cache = DiskCache(tmp_path)
    pins = BlockPins()
    path = cache.lock_path(DIGEST, 1024)
    pins.pin(path, 0)
    (fd,) = pins._fds.values()
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    pins.close()


def test_a_process_lock_tells_a_live_process_from_a_dead_one(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    owner = cache.process.acquire()
    assert process_alive(tmp_path, owner)
    script = (
        "import sys; from modelkitfs.blobs import DiskCache; "
        "print(DiskCache(sys.argv[1]).process.acquire())"
    )
    dead = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert not process_alive(tmp_path, dead)
    assert cache.other_processes() == []
    cache.process.release()
    assert not process_alive(tmp_path, owner)
