"""The shared cache under several processes, crashes, damage, wrong bytes and a size cap, with
real daemons, a real registry and bytes counted at the server."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelkitfs.cache import DiskCache
from tests.conftest import MiB, Mounts, daemon_pid, mount_stats, one_file_kit, running
from tests.support.waiting import wait_for

BIG = 256 * MiB


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, publish) -> tuple[str, str, str]:
    """A kit of one 256 MiB file: (reference, sha256 of the file, layer digest)."""
    data, kit = one_file_kit(tmp_path_factory.mktemp("big"), BIG, 11)
    digest = hashlib.sha256(data).hexdigest()
    return publish(kit, "shared/big"), digest, json.loads(kit.manifest)["layers"][0]["digest"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, publish) -> tuple[str, bytes, str]:
    """A kit of one 16 MiB file: (reference, its bytes, layer digest)."""
    data, kit = one_file_kit(tmp_path_factory.mktemp("small"), 16 * MiB + 5, 12)
    layer = json.loads(kit.manifest)["layers"][0]["digest"]
    return publish(kit, "shared/small"), data, layer


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelkitfs.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_daemons_on_one_cache_download_once(big, proxy, mounts: Mounts) -> None:
    reference, expected, _ = big
    proxy.reset()
    first, second = mounts.mount(reference), mounts.mount(reference)
    with ThreadPoolExecutor(2) as pool:
        digests = list(pool.map(file_sha256, [first / "weights.bin", second / "weights.bin"]))
    assert digests == [expected, expected]
    assert BIG <= proxy.blob_bytes <= BIG + 3 * MiB  # a block or two of slack, tar headers


def test_kill_9_mid_download_then_mount_again(big, proxy, mounts: Mounts) -> None:
    reference, expected, _ = big
    proxy.reset()
    mountpoint = mounts.mount(reference, name="killed")
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(file_sha256, mountpoint / "weights.bin")
        wait_for(lambda: proxy.blob_bytes >= 48 * MiB, "48 MiB downloaded before the kill")
        os.kill(daemon_pid(mountpoint), signal.SIGKILL)
        with pytest.raises(OSError):
            reading.result(timeout=60)
    result = cli("umount", str(mountpoint))
    assert result.returncode == 0, result.stderr
    mounts.mounted.remove(mountpoint)
    mountpoint.rmdir()
    again = mounts.mount(reference, name="killed")
    assert file_sha256(again / "weights.bin") == expected


def test_a_damaged_block_file_is_downloaded_again(small, proxy, mounts: Mounts) -> None:
    reference, data, layer = small
    first = mounts.mount(reference)
    assert (first / "weights.bin").read_bytes() == data
    # Verified once every block is on disk (they are written behind the reads).
    wait_for(lambda: mount_stats(first)["cache"]["verified_blobs"] >= 1, "the blob verified")
    block = DiskCache(mounts.cache_dir).block_path(layer, MiB, 3)
    damaged = bytearray(block.read_bytes())
    damaged[100] ^= 0x01
    block.write_bytes(damaged)

    proxy.reset()
    second = mounts.mount(reference)  # a new daemon: nothing of the blob in its memory
    with open(second / "weights.bin", "rb") as f:
        f.seek(3 * MiB)
        assert f.read(MiB) == data[3 * MiB : 4 * MiB]
    assert 0 < proxy.blob_bytes <= 16 * MiB + 5
    log = mounts.log
    assert f"cached block 3 of {layer} is damaged" in log


def test_verify_full_never_serves_wrong_bytes(small, proxy, mounts: Mounts) -> None:
    reference, _, layer = small
    proxy.corrupt(layer)
    try:
        mountpoint = mounts.mount(reference, verify="full")
        with pytest.raises(OSError) as caught, open(mountpoint / "weights.bin", "rb") as f:
            f.read(4096)
        assert caught.value.errno == errno.EIO
    finally:
        proxy.heal()
    cache = DiskCache(mounts.cache_dir)
    assert layer not in {blob.digest for blob in cache.blobs()}  # nothing wrong stays
    log = mounts.log
    assert f"blob {layer}" in log and "failed verification" in log


def test_wrong_bytes_found_after_reading_fail_reads_until_a_download_verifies(
    small, proxy, mounts: Mounts
) -> None:
    reference, data, layer = small
    proxy.corrupt(layer)
    try:
        mountpoint = mounts.mount(reference)
        deadline = time.monotonic() + 30
        # Wrong bytes go out until every block is cached and the blob fails verification (in
        # the background); from then on reads fail.
        while True:
            try:
                assert (mountpoint / "weights.bin").read_bytes() != data
            except OSError as exc:
                assert exc.errno == errno.EIO
                break
            assert time.monotonic() < deadline, "the wrong blob was never caught"
            time.sleep(0.2)
    finally:
        proxy.heal()
    assert (mountpoint / "weights.bin").read_bytes() == data  # downloaded anew and verified


def test_a_capped_cache_stays_under_its_cap(big, mounts: Mounts, tmp_path: Path) -> None:
    reference, expected, _ = big
    cache_dir = tmp_path / "capped"
    mountpoint = mounts.mount(reference, cache_dir=cache_dir, cache_max_size="64M")
    assert file_sha256(mountpoint / "weights.bin") == expected
    pid = daemon_pid(mountpoint)
    assert cli("umount", str(mountpoint)).returncode == 0
    mounts.mounted.remove(mountpoint)
    deadline = time.monotonic() + 30
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # the daemon finishes its cache writes, then exits
    assert DiskCache(cache_dir).usage() <= 64 * MiB + MiB


def test_prefetch_then_mount_reads_without_the_network(small, proxy, mounts: Mounts) -> None:
    reference, data, layer = small
    result = cli(
        "prefetch", "--plain-http", "--cache-dir", str(mounts.cache_dir),
        f"{proxy.address}/{reference}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "prefetched" in result.stdout and "verified" in result.stdout
    proxy.reset()
    mountpoint = mounts.mount(reference)
    assert (mountpoint / "weights.bin").read_bytes() == data
    assert proxy.blob_bytes == 0

    listing = cli("cache", "ls", "--cache-dir", str(mounts.cache_dir))
    assert layer in listing.stdout and "verified" in listing.stdout
    block = DiskCache(mounts.cache_dir).block_path(layer, MiB, 0)
    block.write_bytes(block.read_bytes()[:-10])  # truncated on disk: caught, evicted
    verify = cli("cache", "verify", "--cache-dir", str(mounts.cache_dir))
    assert verify.returncode == 0 and f"{layer}  partial" in verify.stdout
    assert "damaged" in verify.stderr
    info = cli("cache", "info", "--cache-dir", str(mounts.cache_dir))
    assert "blobs" in info.stdout and info.returncode == 0
    pruned = cli("cache", "prune", "--max-size", "1M", "--cache-dir", str(mounts.cache_dir))
    assert pruned.returncode == 0  # the mount holds its blocks in use: they stay
    assert DiskCache(mounts.cache_dir).usage() > 8 * MiB
    pid = daemon_pid(mountpoint)
    assert cli("umount", str(mountpoint)).returncode == 0
    mounts.mounted.remove(mountpoint)
    deadline = time.monotonic() + 30
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    pruned = cli("cache", "prune", "--max-size", "1M", "--cache-dir", str(mounts.cache_dir))
    assert pruned.returncode == 0 and DiskCache(mounts.cache_dir).usage() <= 2 * MiB
    assert cli("cache", "clear", "--cache-dir", str(mounts.cache_dir)).returncode == 0
    assert not (mounts.cache_dir / "blocks").exists()
