"""A small file system of its own for a test: a tmpfs of a given size and inode count, which a
test can fill, remount read-only and give back, to put a cache through real disk faults."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


class SmallFs:
    def __init__(self, path: Path) -> None:
        self.path = path

    def remount(self, *options: str) -> None:
        """``remount`` with ``options`` (``ro``, ``rw``, ``size=64m``, ``nr_inodes=1000``).
        A remount read-only fails while a file on it is open for writing: retried briefly
        (a download's lock file closes once its blocks are written)."""
        command = ["mount", "-o", ",".join(["remount", *options]), str(self.path)]
        for _ in range(200):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode == 0:
                return
            if "busy" not in result.stderr:
                break
            time.sleep(0.05)  # polling: until no file is open for writing
        raise AssertionError(f"cannot remount {self.path} {options}: {result.stderr.strip()}")


@contextmanager
def small_fs(path: Path, size: str = "64m", inodes: int = 10_000) -> Iterator[SmallFs]:
    """Mount a tmpfs at ``path`` for the block; unmounted (lazily) afterwards, whatever
    happens."""
    if os.geteuid() != 0:
        pytest.fail("disk fault tests mount a tmpfs: run them as root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes}", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield SmallFs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
