"""Disk faults of the shared cache with real daemons, a real registry and a tmpfs of the test's
own (issue cases 9, 10, 12, 13 and 14): a cache folder remounted read-only, out of space or of
inodes, two mounts asking for different caps, records after eviction, commands on a read-only
cache. Each fault test reads during the fault and after it clears, on the same mount."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from modelkitfs.cache import DiskCache
from tests.conftest import MiB, Mounts, daemon_pid, mount_stats, one_file_kit, running
from tests.e2e.blobs.test_shared_cache import cli, file_sha256
from tests.support.tmpfs import SmallFs, small_fs
from tests.support.waiting import wait_for


def kit(tmp_path_factory: pytest.TempPathFactory, publish, size: int, seed: int, name: str):
    data, artifact = one_file_kit(tmp_path_factory.mktemp(name), size, seed)
    layer = json.loads(artifact.manifest)["layers"][0]["digest"]
    return publish(artifact, f"disk/{name}"), data, layer


@pytest.fixture(scope="module")
def kit32(tmp_path_factory, publish) -> tuple[str, bytes, str]:
    """A kit of one 32 MiB file: (reference, its bytes, layer digest)."""
    return kit(tmp_path_factory, publish, 32 * MiB + 9, 31, "k32")


@pytest.fixture(scope="module")
def kit96(tmp_path_factory, publish) -> tuple[str, bytes, str]:
    return kit(tmp_path_factory, publish, 96 * MiB, 32, "k96")


@pytest.fixture(scope="module")
def kit48(tmp_path_factory, publish) -> tuple[str, bytes, str]:
    return kit(tmp_path_factory, publish, 48 * MiB, 33, "k48")


def cache_on(fs: SmallFs, tmp_path: Path) -> Path:
    """A cache folder on ``fs`` whose daemons log outside it: a log open for writing would
    keep the file system from being remounted read-only."""
    cache_dir = fs.path / "cache"
    cache_dir.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    (cache_dir / "logs").symlink_to(logs)
    return cache_dir


def read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def cached(cache_dir: Path, layer: str, first: int, last: int) -> set[int]:
    return DiskCache(cache_dir).cached_blocks(layer, MiB, first, last)


def caches_again(mountpoint: Path, cache_dir: Path, layer: str, data: bytes, first: int) -> None:
    """Once the daemon writes again (a few seconds after its last failed write), read blocks
    not read before, from ``first`` on, until one downloaded since lands in the cache. Every
    byte read is checked."""
    last = len(data) // MiB
    before = cached(cache_dir, layer, first, last)  # cached before the fault
    wait_for(lambda: mount_stats(mountpoint)["cache_writable"], "writes tried again")
    for index in range(first, last):
        chunk = read_at(mountpoint / "weights.bin", index * MiB, MiB)
        assert chunk == data[index * MiB : (index + 1) * MiB]
        poll = time.monotonic() + 1.0
        while time.monotonic() < poll:  # written behind the reader: give it a moment
            if cached(cache_dir, layer, first, last) - before:
                return
            time.sleep(0.05)
    raise AssertionError("the cache was never written again")


def warnings_of(log: str, cache_dir: Path) -> list[str]:
    return [line for line in log.splitlines() if f"cache {cache_dir} cannot be written" in line]


def test_a_cache_remounted_read_only_serves_reads_then_caches_again(
    kit32, mounts: Mounts, tmp_path: Path
) -> None:
    """Case 9: every download failed on the lock file of a read-only cache."""
    reference, data, layer = kit32
    with small_fs(tmp_path / "fs", "128m") as fs:
        cache_dir = cache_on(fs, tmp_path)
        mountpoint = mounts.mount(reference, cache_dir=cache_dir)
        assert read_at(mountpoint / "weights.bin", 0, MiB) == data[:MiB]
        wait_for(lambda: 0 in cached(cache_dir, layer, 0, 0), "caching block 0")
        fs.remount("ro")  # once the blocks fetched ahead of that read are written
        assert not cached(cache_dir, layer, 20, 23)
        assert read_at(mountpoint / "weights.bin", 20 * MiB, 4 * MiB) == data[20 * MiB : 24 * MiB]
        assert not cached(cache_dir, layer, 20, 23)
        assert read_at(mountpoint / "weights.bin", 0, MiB) == data[:MiB]  # cached, in memory
        log = (tmp_path / "logs" / "modelkitfs.log").read_text()
        (warning,) = warnings_of(log, cache_dir)  # one, naming the folder and what to do
        assert "Read-only file system" in warning and "remount" in warning
        fs.remount("rw")
        caches_again(mountpoint, cache_dir, layer, data, 8)
        assert file_sha256(mountpoint / "weights.bin") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("fault", "cleared"),
    [
        (("8m", 10_000), "size=256m"),  # out of space
        (("256m", 30), "nr_inodes=10000"),  # out of inodes
    ],
    ids=["no-space", "no-inodes"],
)
def test_a_full_cache_serves_reads_then_caches_again(
    kit32, mounts: Mounts, tmp_path: Path, fault: tuple[str, int], cleared: str
) -> None:
    """Case 9: a cache out of space or of inodes."""
    reference, data, layer = kit32
    with small_fs(tmp_path / "fs", *fault) as fs:
        cache_dir = cache_on(fs, tmp_path)
        mountpoint = mounts.mount(reference, cache_dir=cache_dir)
        assert read_at(mountpoint / "weights.bin", 0, 8 * MiB) == data[: 8 * MiB]
        log = tmp_path / "logs" / "modelkitfs.log"
        wait_for(lambda: warnings_of(log.read_text(), cache_dir), "the full cache's warning")
        assert len(cached(cache_dir, layer, 0, 7)) < 8
        fs.remount(cleared)
        caches_again(mountpoint, cache_dir, layer, data, 20)  # beyond what was fetched ahead
        warnings = warnings_of(log.read_text(), cache_dir)
        assert len(warnings) == 1, log.read_text()[-6000:]
        (warning,) = warnings
        assert "no space or no inodes" in warning and "free space or inodes" in warning
        assert file_sha256(mountpoint / "weights.bin") == hashlib.sha256(data).hexdigest()


def one_line(result, cache_dir: Path) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert str(cache_dir) in lines[0]
    return lines[0]


def test_commands_on_a_read_only_cache_say_so_in_one_line(kit32, proxy, tmp_path: Path) -> None:
    """Case 14: ls showed a 157-line ExceptionGroup; prefetch and cache clear|prune too."""
    reference, _, _ = kit32
    target = f"{proxy.address}/{reference}"
    with small_fs(tmp_path / "fs", "64m") as fs:
        cache_dir = fs.path / "cache"
        cache_dir.mkdir()
        fs.remount("ro")
        options = ("--plain-http", "--cache-dir", str(cache_dir))
        listing = cli("ls", *options, target)
        assert listing.returncode == 0 and listing.stdout.split() == ["Kitfile", "weights.bin"]
        assert "remount" in one_line(listing, cache_dir)
        inspected = cli("inspect", *options, target)
        assert inspected.returncode == 0 and "0% cached" in inspected.stdout
        one_line(inspected, cache_dir)
        prefetched = cli("prefetch", *options, target)
        assert prefetched.returncode == 1
        assert one_line(prefetched, cache_dir).startswith("modelkitfs: error: cannot prefetch")
        for action in ("clear", "prune"):
            result = cli("cache", action, "--cache-dir", str(cache_dir))
            assert result.returncode == 1
            assert "Read-only file system" in one_line(result, cache_dir)
        info = cli("cache", "info", "--cache-dir", str(cache_dir))
        assert info.returncode == 0 and "Traceback" not in info.stderr


def test_a_smaller_cap_of_a_second_mount_does_not_evict_the_first_ones_blocks(
    kit96, kit48, mounts: Mounts, tmp_path: Path
) -> None:
    """Case 10: the cap is the cache folder's; a mount asking for less while another uses
    the cache is told so and keeps the recorded cap."""
    (big, big_data, big_layer), (small, small_data, _) = kit96, kit48
    cache_dir = tmp_path / "shared"
    first = mounts.mount(big, cache_dir=cache_dir, cache_max_size="256M")
    assert file_sha256(first / "weights.bin") == hashlib.sha256(big_data).hexdigest()
    wait_for(lambda: len(cached(cache_dir, big_layer, 0, 95)) == 96, "caching the first kit")
    second = mounts.mount(small, cache_dir=cache_dir, cache_max_size="64M")
    assert file_sha256(second / "weights.bin") == hashlib.sha256(small_data).hexdigest()
    assert len(cached(cache_dir, big_layer, 0, 95)) == 96
    assert DiskCache(cache_dir).read_config() == {"max_size": 256 * MiB}
    log = (cache_dir / "logs" / "modelkitfs.log").read_text()
    assert "keeps its size cap of 256 MiB" in log


def test_verify_full_verifies_a_blob_larger_than_the_cap(
    kit96, mounts: Mounts, tmp_path: Path
) -> None:
    """Case 10: such a blob could never verify, and the error said to raise one's own cap."""
    reference, data, _ = kit96
    mountpoint = mounts.mount(
        reference, cache_dir=tmp_path / "capped", cache_max_size="64M", verify="full"
    )
    assert file_sha256(mountpoint / "weights.bin") == hashlib.sha256(data).hexdigest()


def prune_all(cache_dir: Path) -> None:
    result = cli("cache", "prune", "--max-size", "1M", "--cache-dir", str(cache_dir))
    assert result.returncode == 0, result.stderr


def blob_counts(cache_dir: Path) -> tuple[int, dict[str, int]]:
    info = cli("cache", "info", "--cache-dir", str(cache_dir)).stdout
    line = next(x for x in info.splitlines() if x.startswith("blobs"))
    total, _, rest = line.removeprefix("blobs").strip().partition(":")
    counts = {word: int(n) for n, word in (part.split() for part in rest.split(","))}
    return int(total), counts


def test_records_stay_true_after_eviction(kit32, proxy, mounts: Mounts) -> None:
    """Case 12: a blob verified once stayed "verified" after eviction: prefetch fetched
    nothing, cache info counted more states than blobs, --prefetch all logged done with
    nothing cached."""
    reference, data, layer = kit32
    cache_dir = mounts.cache_dir
    options = ("--plain-http", "--cache-dir", str(cache_dir))
    target = f"{proxy.address}/{reference}"
    assert cli("prefetch", *options, target).returncode == 0
    prune_all(cache_dir)
    total, counts = blob_counts(cache_dir)
    assert sum(counts.values()) == total and counts["verified"] == 0
    assert " 0% cached" in cli("inspect", *options, target).stdout
    proxy.reset()
    again = cli("prefetch", *options, target)
    assert again.returncode == 0, again.stderr
    assert "(0 B downloaded" not in again.stdout
    assert proxy.blob_bytes >= len(data) - MiB
    total, counts = blob_counts(cache_dir)
    assert sum(counts.values()) == total and counts["verified"] >= 1
    assert "100% cached" in cli("inspect", *options, target).stdout
    proxy.reset()
    offline = mounts.mount(reference)
    assert (offline / "weights.bin").read_bytes() == data
    assert proxy.blob_bytes == 0  # the prefetch was good for running offline
    pid = daemon_pid(offline)
    assert cli("umount", str(offline)).returncode == 0
    mounts.mounted.remove(offline)
    wait_for(lambda: not running(pid), "the daemon's exit")

    prune_all(cache_dir)
    mounts.mount(reference, prefetch="all", name="prefetching")
    wait_for(lambda: "prefetch (all) done" in mounts.log, "the mount's prefetch")
    assert len(cached(cache_dir, layer, 0, 32)) == 33


def test_a_mount_with_a_cap_of_nothing_is_refused(kit32, proxy, mounts: Mounts) -> None:
    """Case 13: ``--cache-max-size 0`` was taken, and evicted what other mounts cached."""
    reference, data, layer = kit32
    first = mounts.mount(reference)
    assert (first / "weights.bin").read_bytes() == data
    wait_for(lambda: len(cached(mounts.cache_dir, layer, 0, 32)) == 33, "caching the kit")
    target = mounts.base / "zero"
    target.mkdir()
    result = cli(
        "mount", "--plain-http", "--cache-dir", str(mounts.cache_dir), "--cache-max-size", "0",
        f"{proxy.address}/{reference}", str(target),
    )  # fmt: skip
    assert result.returncode == 1 and "below the minimum of 64 MiB" in result.stderr
    assert not target.is_mount()
    assert len(cached(mounts.cache_dir, layer, 0, 32)) == 33


def test_a_mount_on_a_read_only_cache_serves_reads_with_one_warning(
    kit32, proxy, tmp_path: Path
) -> None:
    """Case 14, for mount: it used to fail opening its log in the cache."""
    reference, data, _ = kit32
    with small_fs(tmp_path / "fs", "64m") as fs:
        cache_dir = fs.path / "cache"
        cache_dir.mkdir()
        fs.remount("ro")
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        result = cli(
            "mount", "--plain-http", "--cache-dir", str(cache_dir),
            f"{proxy.address}/{reference}", str(mountpoint),
        )  # fmt: skip
        try:
            assert result.returncode == 0, result.stderr
            assert "serves reads uncached" in one_line(result, cache_dir)
            assert (mountpoint / "weights.bin").read_bytes() == data
        finally:
            cli("umount", "--lazy", str(mountpoint))
