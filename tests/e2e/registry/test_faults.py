"""A flaky registry, through the fault-injecting proxy: 5xx bursts, 429 with Retry-After,
connections cut mid-body, stalls, truncated and wrong bodies. Reads ride out what retries can
fix, fail with EIO what they cannot (the daemon living on), and serve again once the fault
clears, on the same mount. How long a failing read takes is the benchmark's to measure."""

from __future__ import annotations

import errno
import hashlib
import time
from pathlib import Path

import pytest

from modelkitfs.cache import DiskCache
from modelkitfs.mount import unmount
from tests.conftest import MiB, Mounts, daemon_pid, mount_stats, one_file_kit, running
from tests.support.registry_proxy import CountingProxy
from tests.support.waiting import wait_for

SIZE = 48 * MiB + 123


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, publish) -> tuple[str, bytes]:
    """A kit of one 48 MiB file: (reference, the file's bytes)."""
    data, artifact = one_file_kit(tmp_path_factory.mktemp("faults"), SIZE, 21)
    return publish(artifact, "faults/kit"), data


@pytest.mark.parametrize(
    ("kind", "count", "params"),
    [
        ("status", 3, {"status": 503}),
        ("status", 2, {"status": 502}),
        ("cut", 3, {}),
        ("truncate", 3, {}),
        ("stall", 1, {"seconds": 6}),
    ],
    ids=["503", "502", "cut", "truncate", "stall"],
)
def test_transient_faults_are_ridden_out(
    kit: tuple[str, bytes], faulty: CountingProxy, mounts: Mounts, kind: str, count: int, params
) -> None:
    reference, data = kit
    mountpoint = mounts.mount(reference, timeout=10)  # a stall is noticed after 2.5 s
    faulty.reset()
    faulty.inject(kind, count, **params)
    assert (mountpoint / "weights.bin").read_bytes() == data
    assert faulty.faults_injected == {kind: count}
    if kind in ("cut", "truncate"):
        # Each cut transfer resumed where it stopped: at most a few blocks' worth again.
        assert faulty.blob_bytes <= SIZE + 4 * MiB
    assert "retrying" in mounts.log


def test_retry_after_is_honoured(
    kit: tuple[str, bytes], faulty: CountingProxy, mounts: Mounts
) -> None:
    reference, data = kit
    mountpoint = mounts.mount(reference)
    faulty.inject("status", 1, status=429, retry_after=3)
    started = time.monotonic()
    with open(mountpoint / "weights.bin", "rb") as f:
        assert f.read(MiB) == data[:MiB]
    # Without Retry-After the first retry comes within 0.25 s.
    assert time.monotonic() - started >= 2.9
    assert faulty.faults_injected == {"status": 1}
    assert (mountpoint / "weights.bin").read_bytes() == data


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("status", {"status": 503}),
        ("stall", {"seconds": 30}),
        ("status", {"status": 429, "retry_after": 600}),
    ],
    ids=["503", "stall", "429-retry-after-too-long"],
)
def test_a_read_that_cannot_be_served_fails_with_eio_then_recovers(
    kit: tuple[str, bytes], faulty: CountingProxy, mounts: Mounts, kind: str, params
) -> None:
    reference, data = kit
    mountpoint = mounts.mount(reference, timeout=3)
    idle = mount_stats(mountpoint)["tasks"]
    faulty.inject(kind, 10_000, **params)
    started = time.monotonic()
    with pytest.raises(OSError) as failure:
        (mountpoint / "weights.bin").read_bytes()
    elapsed = time.monotonic() - started
    assert failure.value.errno == errno.EIO  # the daemon's answer: a dead one gives ENOTCONN
    if kind == "stall":
        assert elapsed >= 2.5  # it did wait for the stalled connection
    assert "weights.bin" in mounts.log
    faulty.heal()
    # A read finding the failed read's download still retrying shares its outcome (a stalled
    # attempt may outlast it): the next read starts once that download has ended.
    wait_for(lambda: mount_stats(mountpoint)["tasks"] <= idle, "the failed download ended")
    # The same mount serves again, and nothing wrong was kept.
    assert (mountpoint / "weights.bin").read_bytes() == data


def test_wrong_bytes_of_a_verified_blob_are_fetched_again_never_kept(
    kit: tuple[str, bytes], faulty: CountingProxy, mounts: Mounts
) -> None:
    """Once a blob is verified its block hashes are known, so a block downloaded again (after
    the cache was pruned) is checked on its own: wrong bytes are refetched, and never kept."""
    reference, data = kit
    first = mounts.mount(reference)
    assert (
        hashlib.sha256((first / "weights.bin").read_bytes()).digest()
        == hashlib.sha256(data).digest()
    )
    wait_for(lambda: mount_stats(first)["cache"]["verified_blobs"] >= 1, "the blob verified")
    stop(first)  # its daemon pins the blocks it holds (eviction spares blocks in use)
    DiskCache(mounts.cache_dir).prune(0)

    mountpoint = mounts.mount(reference)
    faulty.reset()
    faulty.inject("wrong", 2)
    assert (mountpoint / "weights.bin").read_bytes() == data
    assert faulty.faults_injected == {"wrong": 2}
    assert "differ from those verified before" in mounts.log

    stop(mountpoint)
    DiskCache(mounts.cache_dir).prune(0)
    retried = mounts.mount(reference)
    faulty.inject("wrong", 10_000)
    with pytest.raises(OSError) as failure:
        (retried / "weights.bin").read_bytes()
    assert failure.value.errno == errno.EIO
    faulty.heal()
    assert (retried / "weights.bin").read_bytes() == data
    # What the cache kept is right: a new mount reads it with the network refusing everything.
    faulty.inject("status", 10_000)
    assert (mounts.mount(reference, timeout=3) / "weights.bin").read_bytes() == data


def stop(mountpoint: Path) -> None:
    """Unmount and wait until the daemon is gone."""
    pid = daemon_pid(mountpoint)
    unmount(mountpoint)
    wait_for(lambda: not running(pid), "the daemon stopped after unmount")


def test_failures_are_reported_in_one_line(
    kit: tuple[str, bytes], faulty: CountingProxy, mounts: Mounts
) -> None:
    reference, _ = kit
    mountpoint = mounts.mount(reference, timeout=2)
    faulty.inject("status", 10_000, status=500)
    with pytest.raises(OSError) as failure:
        (mountpoint / "weights.bin").read_bytes()
    assert failure.value.errno == errno.EIO
    # The download gives up at its own deadline too, a little after the read.
    wait_for(lambda: "gave up" in mounts.log, "the download gave up")
    lines = [line for line in mounts.log.splitlines() if " ERROR " in line]
    assert lines
    assert not any("Traceback" in line for line in mounts.log.splitlines())
    assert any("HTTP 500" in line and "gave up" in line for line in lines), lines
    assert mount_stats(mountpoint)["requests"] > 1  # the daemon lives on, and did retry
