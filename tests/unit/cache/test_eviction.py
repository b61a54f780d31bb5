"""Eviction under clock jumps and beside blocks in use (issue cases 10, 11 and 13)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelkitfs.cache import DiskCache

DIGEST = "sha256:" + "ef" * 32
OTHER = "sha256:" + "12" * 32
KiB = 1024
DAY = 86400


def block(cache: DiskCache, digest: str, index: int, used: float) -> Path:
    cache.write_block(digest, KiB, index, bytes([index]) * KiB)
    path = cache.block_path(digest, KiB, index)
    os.utime(path, (used, used))
    return path


def test_a_block_last_used_in_the_future_goes_before_blocks_in_use(tmp_path: Path) -> None:
    """Case 11: the clock went back a day; the block used before that is not kept over the
    ones used since."""
    cache = DiskCache(tmp_path)
    now = time.time()
    future = block(cache, DIGEST, 0, now + DAY)
    old = block(cache, DIGEST, 1, now - 3600)
    recent = block(cache, DIGEST, 2, now)
    cache.prune(int(2 * (KiB + 4) / 0.9) - 1)  # room for one block and a bit: two go
    assert not future.exists() and not old.exists()
    assert recent.exists()


def test_reading_a_block_dated_in_the_future_dates_it_now(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    path = block(cache, DIGEST, 0, time.time() + DAY)
    assert cache.read_block(DIGEST, KiB, 0, KiB) == bytes([0]) * KiB
    assert abs(path.stat().st_mtime - time.time()) < 60


def test_pinned_blocks_are_never_evicted_whatever_the_cap(tmp_path: Path) -> None:
    """Cases 10 and 13: what a mount holds in use stays, even under a cap of nothing."""
    cache = DiskCache(tmp_path)
    now = time.time()
    paths = [block(cache, DIGEST, i, now - 100 * (5 - i)) for i in range(5)]
    other = block(cache, OTHER, 0, now - DAY)
    user = DiskCache(tmp_path)  # another mount on the same folder
    user.pins.pin(user.lock_path(DIGEST, KiB), 0)  # the oldest block: first in line otherwise
    user.pins.pin(user.lock_path(DIGEST, KiB), 3)
    left = cache.prune(0)
    assert [p.exists() for p in paths] == [True, False, False, True, False]
    assert not other.exists()
    assert left == 2 * (KiB + 4)
    user.pins.close()
    assert cache.prune(0) == 0


def test_a_temporary_file_stays_while_its_writer_lives_whatever_its_age(
    tmp_path: Path,
) -> None:
    """Case 11: a forward jump past ten minutes made other processes' writes in flight look
    stale; now their writer's lock decides."""
    cache = DiskCache(tmp_path)
    writer = DiskCache(tmp_path)  # a process in the middle of writing a block
    directory = cache.block_path(DIGEST, KiB, 0).parent
    directory.mkdir(parents=True)
    in_flight = directory / f".tmp-{writer.process.acquire()}-abcd"
    in_flight.write_bytes(b"half a block")
    past = time.time() - 3 * 3600
    os.utime(in_flight, (past, past))
    script = "import sys; from modelkitfs.cache import DiskCache; print(DiskCache(sys.argv[1]).process.acquire())"  # noqa: E501
    gone = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    orphan = directory / f".tmp-{gone}-efgh"
    orphan.write_bytes(b"left by a killed writer")  # just now, by the clock
    cache.prune(None)
    assert in_flight.exists()
    assert not orphan.exists()
    writer.process.release()
    cache.prune(None)
    assert not in_flight.exists()


def test_writes_name_their_temporary_files_after_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelkitfs.cache.blockfile import write_atomic

    cache = DiskCache(tmp_path)
    seen = []
    real = os.replace

    def spy(source: str, target: object) -> None:
        seen.append(Path(source).name)
        real(source, target)

    monkeypatch.setattr(os, "replace", spy)
    cache.write_block(DIGEST, KiB, 0, b"x" * KiB)
    write_atomic(tmp_path / "f", b"y", owner=cache.process.id)
    temporary = [name for name in seen if name.startswith(".tmp-")]
    assert len(temporary) == 2
    assert all(name.startswith(f".tmp-{cache.process.id}-") for name in temporary)
