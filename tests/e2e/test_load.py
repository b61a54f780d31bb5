"""32 readers at once, random and sequential, against a faulty registry and a cache too small
to hold the kit (so reads keep reaching the network): every byte checked against the source,
memory, file descriptors, connections and tasks bounded. ``MODELKITFS_LOAD_SECONDS`` sets how
long (default 20; ``scripts/soak`` runs it for longer and prints the report)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from modelkitfs.cache.pages import KEPT_OPEN
from tests.conftest import MiB, Mounts, daemon_pid, mount_stats, write
from tests.support.kitbuilder import build_modelkit
from tests.support.registry_proxy import CountingProxy
from tests.support.waiting import POLL

SECONDS = float(os.environ.get("MODELKITFS_LOAD_SECONDS", "20"))
READERS = 32
TIMEOUT = 10  # --timeout: a stall is given up after 2.5 s
FAULTS = ["status", "cut", "truncate", "stall"]
FAULT_RATE = 0.05  # of blob requests
FILES = {"model/weights.bin": 160 * MiB + 7, "data/train.bin": 48 * MiB + 3}
KITFILE = {
    "manifestVersion": "1.0.0",
    "model": {"path": "model/weights.bin"},
    "datasets": [{"name": "train", "path": "data/train.bin"}],
}


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    served: int = 0
    bytes_served: int = 0
    wrong: int = 0
    failed: int = 0
    failure_seconds: list[float] = field(default_factory=list)
    errors: set[str] = field(default_factory=set)

    def read(self, fd: int, offset: int, length: int, expected: bytes) -> None:
        started = time.monotonic()
        try:
            data = os.pread(fd, length, offset)
        except OSError as exc:
            with self.lock:
                self.failed += 1
                self.failure_seconds.append(time.monotonic() - started)
                self.errors.add(errno.errorcode.get(exc.errno or 0, str(exc)))
            return
        finally:
            # Drop the pages, so that the next read of them reaches the daemon again.
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        with self.lock:
            self.served += 1
            self.bytes_served += len(data)
            self.wrong += data != expected[offset : offset + length]


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, publish) -> tuple[str, dict[str, bytes]]:
    directory = tmp_path_factory.mktemp("load")
    rng = np.random.default_rng(32)
    sources = {name: rng.bytes(size) for name, size in FILES.items()}
    for name, data in sources.items():
        write(directory / name, data)
    return publish(build_modelkit(directory, KITFILE), "load/kit"), sources


def daemon_resources(pid: int) -> dict[str, int]:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            targets.append(os.readlink(fd))
    sockets = sum(1 for target in targets if target.startswith("socket:"))
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "fds": len(targets),
        "sockets": sockets,
        "rss_mib": int(status["VmRSS"].split()[0]) // 1024,
        "peak_rss_mib": int(status["VmHWM"].split()[0]) // 1024,
    }


def readers(mountpoint: Path, sources: dict[str, bytes], tally: Tally, stop: threading.Event):
    def random_reader(seed: int) -> None:
        rng = random.Random(seed)
        fds = {name: os.open(mountpoint / name, os.O_RDONLY) for name in sources}
        try:
            while not stop.is_set():
                name = rng.choice(list(sources))
                length = rng.choice([4096, 65536, MiB, 3 * MiB + 17])
                offset = rng.randrange(0, len(sources[name]))
                tally.read(fds[name], offset, length, sources[name])
        finally:
            for fd in fds.values():
                os.close(fd)

    def sequential_reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            name = rng.choice(list(sources))
            fd = os.open(mountpoint / name, os.O_RDONLY)
            try:
                offset = rng.randrange(0, len(sources[name]) // 2)
                while offset < len(sources[name]) and not stop.is_set():
                    tally.read(fd, offset, MiB, sources[name])
                    offset += MiB
            finally:
                os.close(fd)

    for i in range(READERS):
        target = random_reader if i % 2 else sequential_reader
        yield threading.Thread(target=target, args=(i,), name=f"reader-{i}", daemon=True)


def test_32_readers_under_faults(
    kit: tuple[str, dict[str, bytes]], faulty: CountingProxy, mounts: Mounts
) -> None:
    reference, sources = kit
    mountpoint = mounts.mount(reference, timeout=TIMEOUT, cache_max_size="96M", log_level="info")
    pid = daemon_pid(mountpoint)
    for name, data in sources.items():  # warm up: open, index, one read each
        with open(mountpoint / name, "rb") as f:
            assert f.read(4096) == data[:4096]
    idle = {**daemon_resources(pid), "tasks": mount_stats(mountpoint)["tasks"]}

    faulty.inject_randomly(FAULTS, FAULT_RATE, seed=7, seconds=4, retry_after=1)
    tally, stop = Tally(), threading.Event()
    threads = list(readers(mountpoint, sources, tally, stop))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples = []
    try:
        while time.monotonic() - started < SECONDS:
            time.sleep(min(5.0, SECONDS / 4))
            samples.append(daemon_resources(pid))
    finally:
        stop.set()
        deadline = time.monotonic() + TIMEOUT * 3
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    assert not [t.name for t in threads if t.is_alive()], "readers hang"
    elapsed = time.monotonic() - started
    faults = faulty.faults_injected
    faulty.heal()

    def settled() -> bool:
        """Abandoned work has ended (within its --timeout and a grace), and idle worker
        threads have retired with the connections they kept (after 10 s idle)."""
        fds = daemon_resources(pid)["fds"]
        return mount_stats(mountpoint)["tasks"] <= idle["tasks"] and fds <= fd_bound

    # kept-alive connections at most, and the block files the event loop keeps open
    fd_bound = idle["fds"] + READERS + 8 + KEPT_OPEN
    deadline = time.monotonic() + TIMEOUT * 3
    while not settled() and time.monotonic() < deadline:  # a leak never settles
        time.sleep(POLL)
    after = {**daemon_resources(pid), "tasks": mount_stats(mountpoint)["tasks"]}
    stats = mount_stats(mountpoint)
    report = {
        "seconds": round(elapsed),
        "readers": READERS,
        "faults_injected": faults,
        "reads_served": tally.served,
        "mib_served": tally.bytes_served // MiB,
        "reads_failed": tally.failed,
        "failure_errors": sorted(tally.errors),
        "slowest_failure_s": round(max(tally.failure_seconds, default=0), 1),
        "wrong_reads": tally.wrong,
        "blob_mib_fetched": stats["fetched_bytes"] // MiB,
        "daemon_peak_rss_mib": after["peak_rss_mib"],
        "idle": idle,
        "after": after,
        "during": {k: max(s[k] for s in samples) for k in ("fds", "sockets", "rss_mib")},
    }
    print("LOAD REPORT", json.dumps(report))

    assert tally.wrong == 0
    assert sum(faults.values()) >= 10, faults  # the faults did happen
    assert tally.served > 10 * READERS
    assert tally.failed <= tally.served // 100, report  # retries ride out transient faults
    assert max(tally.failure_seconds, default=0) < TIMEOUT * 2, report
    assert after["peak_rss_mib"] < 400, report
    assert after["tasks"] <= idle["tasks"], report  # nothing left running
    assert after["fds"] <= fd_bound, report
    assert after["sockets"] <= 2 * READERS + 8, report
    # The same mount serves right after the faults end.
    for name, data in sources.items():
        assert (mountpoint / name).read_bytes() == data
