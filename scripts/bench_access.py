"""Access patterns other than one stream (issue 30), each beside its baselines in the same run.

- ``fio`` (Debian's) runs the same jobs against the model file of a new mount whose blocks are
  all in the disk cache, against ratarmount over the same layer tar on local disk, and against
  the local file; the page cache is emptied before each job (``drop_caches`` as root, and
  ``--invalidate=1``). Beside the mount's figures: the daemon's CPU per MiB or per read, and
  the bytes it read from the cache disk per byte the reader got.
- An image-folder kit (files of 2-120 KB in one layer) read whole in shuffled order by 8
  threads, as a ``DataLoader``'s workers read it: warm (blocks cached, a new mount) against
  ratarmount over the layer tar; cold against downloading the layer first and reading the
  local files, on loopback and through the object-storage link.
- Cold random reads of 4 KiB and 64 KiB, one at a time on a new mount with an empty cache:
  bytes fetched per byte read and each read's time, on loopback and through the link.

The numbers in parentheses are the issue's targets; a figure is never asserted.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trio
from bench_disk import disk_figures
from bench_tools import (
    MODEL,
    Bench,
    MiB,
    daemon_pid,
    drop_page_cache,
    floor_mounted,
    process_with,
    ratarmounted,
    stats,
    timed,
    wait_for_exit,
)
from machine import process_cpu

from modelkitfs import MountOptions
from modelkitfs.session.prefetch import prefetch

IMAGES = "images"
READERS = 8


@dataclass(frozen=True)
class Job:
    name: str
    rw: str
    bs: str
    readers: int
    engine: str = "psync"
    quarters: bool = False  # each reader its own quarter of the file, in order
    target: str = ""  # the issue's, against ratarmount


JOBS = [
    Job("1 reader, 1 MiB sequential", "read", "1M", 1, target="1.0"),
    Job("4 readers, 1 MiB sequential, quarters", "read", "1M", 4, quarters=True, target="1.0"),
    Job("4 readers, 4 KiB random", "randread", "4k", 4, target="0.5"),
    Job("4 readers, 4 KiB random, mmap", "randread", "4k", 4, engine="mmap", target="0.5"),
    Job("4 readers, 64 KiB random", "randread", "64k", 4),
]
ONE_RANDOM = Job("1 reader, 4 KiB random", "randread", "4k", 1)


@dataclass(frozen=True)
class Outcome:
    rate: float  # MiB/s
    reads: int
    seconds: float


def fio(path: Path, job: Job, runtime: float) -> Outcome:
    """Run ``job`` on ``path`` with an empty page cache."""
    size = path.stat().st_size
    command = [
        "fio",
        "--name=bench",
        f"--filename={path}",
        "--readonly",
        f"--rw={job.rw}",
        f"--bs={job.bs}",
        f"--numjobs={job.readers}",
        f"--ioengine={job.engine}",
        "--invalidate=1",
        "--group_reporting",
        "--output-format=json",
    ]
    if job.quarters:
        quarter = size // job.readers // MiB * MiB
        command += [f"--size={quarter}", f"--offset_increment={quarter}"]
    elif job.rw == "randread":
        command += ["--time_based", f"--runtime={runtime}", "--norandommap", "--randrepeat=0"]
    drop_page_cache(path.parent)
    result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    read = result["jobs"][0]["read"]
    seconds = read["runtime"] / 1000
    return Outcome(read["io_bytes"] / MiB / seconds, read["total_ios"], seconds)


class DaemonUse:
    """CPU seconds and bytes read from disk by a process, between construction and ``stop``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu, self.disk = process_cpu(pid), self._read_bytes()

    def _read_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> tuple[float, int]:
        return process_cpu(self.pid) - self.cpu, self._read_bytes() - self.disk


@contextmanager
def new_mount(bench: Bench, ref: str, cache: str) -> Iterator[Path]:
    """A new mount of ``ref`` over ``cache``; on leaving, its daemon is waited for (so the
    next figure starts with the blocks it wrote on disk)."""
    with bench.mounted(ref, cache) as mnt:
        pid = daemon_pid(mnt)
        yield mnt
    wait_for_exit(pid)


def fio_figures(bench: Bench, ref: str, local: Path, layer_tar: Path, runtime: float) -> None:
    """Every job against the mount (blocks cached, a new mount), ratarmount and the local
    file, one after the other, job by job."""
    options = MountOptions(plain_http=True, cache_dir=str(bench.base / "fio"))
    trio.run(prefetch, ref, options)
    with ratarmounted(bench.base, layer_tar) as rat:
        if rat is not None:
            fio(rat / MODEL, JOBS[0], runtime)  # its index built and loaded
        for job in JOBS:
            local_rate = fio(local, job, runtime).rate
            rat_rate = fio(rat / MODEL, job, runtime).rate if rat is not None else None
            with new_mount(bench, ref, "fio") as mnt:
                use = DaemonUse(daemon_pid(mnt))
                ours = fio(mnt / MODEL, job, runtime)
                cpu, disk = use.stop()
            target = f"({job.target}), " if job.target else ""
            against = f"{ours.rate / rat_rate:.2f}x ratarmount {target}" if rat_rate else ""
            bench.add(
                f"9 fio {job.name}",
                ours.rate,
                "MiB/s",
                f"{against}{ours.rate / local_rate:.2f}x local file; daemon "
                f"{1000 * cpu / (ours.rate * ours.seconds):.2f} ms CPU per MiB, "
                f"{disk / (ours.rate * ours.seconds * MiB):.2f} disk bytes per byte",
            )
            if rat_rate:
                bench.add(f"9 fio {job.name}: ratarmount", rat_rate, "MiB/s", "")
            bench.add(f"9 fio {job.name}: local file", local_rate, "MiB/s", "")
        floor_source = bench.base / "floor-model"
        floor_source.mkdir(exist_ok=True)
        if not (floor_source / MODEL).exists():
            os.link(local, floor_source / MODEL)
        with floor_mounted(bench.base, floor_source) as floor:
            for job in JOBS[:2]:
                use = DaemonUse(process_with("pyfuse3_floor.py"))
                floor_run = fio(floor / MODEL, job, runtime)
                cpu, _ = use.stop()
                bench.add(
                    f"9 fio {job.name}: pyfuse3 floor",
                    floor_run.rate,
                    "MiB/s",
                    f"{1000 * cpu / (floor_run.rate * floor_run.seconds):.2f} ms CPU per MiB",
                )
        with new_mount(bench, ref, "fio") as mnt:
            pid = daemon_pid(mnt)
            for figure in ("new mount", "blocks checked"):
                use = DaemonUse(pid)
                ours = fio(mnt / MODEL, ONE_RANDOM, runtime)
                cpu, disk = use.stop()
                bench.add(
                    f"9 fio {ONE_RANDOM.name}, {figure}",
                    ours.reads / ours.seconds,
                    "reads/s",
                    f"daemon {1000 * cpu / ours.reads:.3f} ms CPU per read (0.1), "
                    f"{disk / (ours.reads * 4096):.1f} disk bytes per byte (2)",
                )
    disk_figures(bench, bench.base / "fio", layer_tar)


COLD_READS = 40


def cold_random(bench: Bench, ref: str, cache: str, setting: str = "") -> None:
    """Target 4: random reads of 4 KiB and 64 KiB on a new mount with an empty cache, one at a
    time (a reader waiting on each): the bytes fetched per byte read, and each read's time
    (time to first byte: the read is its first byte's wait), the first and the median."""
    rng = random.Random(11)
    for length in (4096, 64 * 1024):  # each on its own empty cache: the first's pushes stay
        with new_mount(bench, ref, f"{cache}-{length}") as mnt:
            path = mnt / MODEL
            size = path.stat().st_size
            before = stats(mnt)["fetched_bytes"]
            times = []
            with open(path, "rb", buffering=0) as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
                for _ in range(COLD_READS):
                    offset = rng.randrange(size - length)
                    started = time.perf_counter()
                    os.pread(f.fileno(), length, offset)
                    times.append(time.perf_counter() - started)
            fetched = stats(mnt)["fetched_bytes"] - before
            bench.add(
                f"11 {setting}cold random {length // 1024} KiB reads",
                1000 * statistics.median(times),
                "ms",
                f"median of {COLD_READS}; first {1000 * times[0]:.1f} ms; "
                f"{fetched / (COLD_READS * length):.0f} bytes fetched per byte read",
            )


def make_images(root: Path, count: int) -> None:
    """``count`` files of 2-120 KB in 100 class folders, as an image-folder dataset."""
    rng = np.random.default_rng(1)
    for i in range(count):
        path = root / IMAGES / f"class{i % 100:03d}" / f"img{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(int(rng.integers(2000, 120_000))))


def image_names(root: Path) -> list[str]:
    names = sorted(str(p.relative_to(root)) for p in (root / IMAGES).rglob("*.jpg"))
    random.Random(7).shuffle(names)
    return names


def read_files(root: Path, names: list[str]) -> float:
    """Seconds for ``READERS`` threads to read every file whole, in the order given."""

    def one(name: str) -> None:
        with open(root / name, "rb", buffering=0) as f:
            f.read()

    def every() -> None:
        with ThreadPoolExecutor(READERS) as pool:
            list(pool.map(one, names, chunksize=16))

    return timed(every)


def small_files_warm(bench: Bench, ref: str, source: Path, layer_tar: Path) -> None:
    """Warm: blocks in the cache, a new mount, the page cache emptied; against ratarmount over
    the layer tar (its index built)."""
    names = image_names(source)
    options = MountOptions(plain_http=True, cache_dir=str(bench.base / "images"))
    trio.run(prefetch, ref, options)
    with ratarmounted(bench.base, layer_tar) as rat:
        rat_s = None
        if rat is not None:
            read_files(rat, names[:100])  # its index loaded
            drop_page_cache(bench.base)
            rat_s = read_files(rat, names)
    with floor_mounted(bench.base, source) as floor:
        drop_page_cache(bench.base)
        use = DaemonUse(process_with("pyfuse3_floor.py"))
        floor_s = read_files(floor, names)
        floor_cpu, _ = use.stop()
    with new_mount(bench, ref, "images") as mnt:
        drop_page_cache(bench.base)
        use = DaemonUse(daemon_pid(mnt))
        ours_s = read_files(mnt, names)
        cpu, disk = use.stop()
    served = sum((source / name).stat().st_size for name in names)
    against = f"{rat_s / ours_s:.2f}x ratarmount (1.0); " if rat_s else ""
    bench.add(
        f"10 {len(names)} small files, 8 threads, warm",
        len(names) / ours_s,
        "files/s",
        f"{against}daemon {1000 * cpu / len(names):.3f} ms CPU per file, "
        f"{disk / served:.2f} disk bytes per byte",
    )
    if rat_s:
        bench.add("10 small files: ratarmount", len(names) / rat_s, "files/s", "")
    bench.add(
        "10 small files: pyfuse3 floor",
        len(names) / floor_s,
        "files/s",
        f"{rat_s / floor_s:.2f}x ratarmount; ours {floor_s / ours_s:.2f}x the floor; "
        f"floor {1000 * floor_cpu / len(names):.3f} ms CPU per file"
        if rat_s
        else "",
    )


def small_files_cold(
    bench: Bench, ref: str, source: Path, blob_url: str, setting: str = ""
) -> None:
    """Cold (an empty cache) against downloading the layer first, then reading the local
    files (in the page cache, as just unpacked)."""
    names = image_names(source)
    download = bench.base / "images-download.tar"
    curl_s = timed(
        lambda: subprocess.run(["curl", "-sf", "-o", str(download), blob_url], check=True)
    )
    download.unlink()
    local_s = read_files(source, names)
    cache = f"images-cold{setting.replace(' ', '-').strip(':-')}"
    with new_mount(bench, ref, cache) as mnt:
        cold_s = read_files(mnt, names)
    bench.add(
        f"10 {setting}small files, 8 threads, cold",
        len(names) / cold_s,
        "files/s",
        f"{(curl_s + local_s) / cold_s:.2f}x downloading first (1.0): "
        f"{cold_s:.1f} s against {curl_s:.1f} + {local_s:.1f} s",
    )


def image_kit_ref(registry: str) -> str:
    return f"{registry}/bench/images:plain"


def access_figures(
    bench: Bench,
    registry: str,
    source: Path,
    layer_tar: Path,
    images: Path,
    images_tar: Path,
    images_digest: str,
    runtime: float,
) -> None:
    """Every figure of this module on loopback."""
    print("access patterns: fio, small files", flush=True)
    fio_figures(bench, f"{registry}/bench/kit:plain", source / MODEL, layer_tar, runtime)
    cold_random(bench, f"{registry}/bench/kit:plain", "cold-random")
    ref = image_kit_ref(registry)
    small_files_cold(bench, ref, images, images_blob_url(registry, images_digest))
    small_files_warm(bench, ref, images, images_tar)


def images_blob_url(registry: str, digest: str) -> str:
    return f"http://{registry}/v2/bench/images/blobs/{digest}"
