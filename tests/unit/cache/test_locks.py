"""Pins and process locks of the shared cache (issue cases 10, 11 and 13), and who may open
them (issue 29, case 5)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from modelkitfs.cache import DiskCache
from modelkitfs.cache.locks import BlockPins, pinned_blocks, process_alive

DIGEST = "sha256:" + "cd" * 32


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
            "import sys; from pathlib import Path; from modelkitfs.cache.locks import "
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
        "import sys; from modelkitfs.cache import DiskCache; "
        "print(DiskCache(sys.argv[1]).process.acquire())"
    )
    dead = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert not process_alive(tmp_path, dead)
    assert cache.other_processes() == []
    cache.process.release()
    assert not process_alive(tmp_path, owner)


def test_a_locks_folder_an_earlier_version_left_open_is_closed_by_a_writer(tmp_path: Path) -> None:
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks").chmod(0o755)
    cache = DiskCache(tmp_path)
    cache.write_block(DIGEST, 1024, 0, b"x" * 1024)
    assert (tmp_path / "locks").stat().st_mode & 0o777 == 0o700
    cache.process.release()
