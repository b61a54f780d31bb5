"""Benchmarks, each beside a baseline measured in the same run; prints a table and JSON.

Two settings: the real registry on loopback (the CPU is the limit), and an "object-storage link":
a proxy of ours adding 30 ms before each response's first byte, 50 MB/s per connection and
400 MB/s in all (tests/link_proxy.py). The kit: a safetensors model of 1 GiB shaped like a
real checkpoint (a GPT-2-medium-like transformer in float32: an embedding, then per block the
attention and MLP weights, biases and norms: 220 tensors) and a dataset of 20,000 small files;
the same kit gzip-compressed. "One tensor" is a block's MLP weight (16 MiB), as a loader of
one layer reads: with a few equal tensors, one tensor is so large a share of the blob that no
reader could load it in a tenth of the time ``curl`` takes for the whole. ``--quick`` shrinks
everything for a smoke run. No figure is asserted: machines are shared and noisy; the ratios
are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import CpuUse, folio_kib
from safetensors import safe_open
from safetensors.numpy import save_file

from modelkitfs import MountOptions, mount, unmount
from tests.kitbuilder import build_modelkit, push
from tests.link_proxy import LinkProxy
from tests.registry_server import running_registry

MiB = 1024 * 1024
MODEL = "model.safetensors"
ONE_TENSOR = "h.8.mlp.c_fc.weight"


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes, started once the disk has written what came before: the
    writeback of a cold read's cache blocks took a fifth of the two cores from the warm read
    measured after it (1.6 ms of CPU per MiB read against 1.2)."""
    os.sync()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def read_all(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(MiB):
            pass


def read_head(path: Path) -> None:
    with open(path, "rb") as f:
        f.read(4096)


def stats(mountpoint: Path) -> dict:
    return json.loads(os.getxattr(mountpoint, "user.modelkitfs.stats"))


def process_with(*words: str) -> int:
    """The process whose command line holds every one of ``words``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                command = (entry / "cmdline").read_bytes()
                if all(word.encode() in command for word in words):
                    return int(entry.name)
    raise RuntimeError(f"no process running {' '.join(words)}")


def daemon_pid(mountpoint: Path) -> int:
    return process_with("modelkitfs: ", f" on {mountpoint}")  # the daemon's process title


def registry_pid(bench: Bench) -> int:
    return process_with("serve", str(bench.base / "registry"))


class PeakRss:
    """Samples a process's resident size every 20 ms; ``peak`` in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) / 1024)
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


class Bench:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.rows: list[tuple[str, float, str, str]] = []  # name, value, unit, note

    def add(self, name: str, value: float, unit: str = "", note: str = "") -> None:
        self.rows.append((name, value, unit, note))
        print(f"  {name:<44} {value:10.2f} {unit:<6} {note}", flush=True)

    @contextlib.contextmanager
    def mounted(self, reference: str, cache: str, **options: object) -> Iterator[Path]:
        mountpoint = Path(tempfile.mkdtemp(dir=self.base))
        mount(
            reference,
            mountpoint,
            MountOptions(plain_http=True, cache_dir=str(self.base / cache), **options),
        )
        try:
            yield mountpoint
        finally:
            unmount(mountpoint, lazy=True)


def transformer(vocab: int, width: int, blocks: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a GPT-2-style checkpoint."""
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, width), "wpe.weight": (1024, width)}
    for b in range(blocks):
        for name, shape in {
            "ln_1.weight": (width,),
            "ln_1.bias": (width,),
            "attn.c_attn.weight": (width, 3 * width),
            "attn.c_attn.bias": (3 * width,),
            "attn.c_proj.weight": (width, width),
            "attn.c_proj.bias": (width,),
            "ln_2.weight": (width,),
            "ln_2.bias": (width,),
            "mlp.c_fc.weight": (width, 4 * width),
            "mlp.c_fc.bias": (4 * width,),
            "mlp.c_proj.weight": (4 * width, width),
            "mlp.c_proj.bias": (width,),
        }.items():
            shapes[f"h.{b}.{name}"] = shape
    return shapes | {"ln_f.weight": (width,), "ln_f.bias": (width,)}


def make_source(root: Path, shapes: dict[str, tuple[int, ...]], small_files: int) -> None:
    rng = np.random.default_rng(0)
    save_file(
        {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()},
        root / MODEL,
    )
    for i in range(small_files):
        path = root / "data" / f"shard{i % 100:03d}" / f"item{i:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(int(rng.integers(200, 2000))))


def curl(url: str) -> float:
    return timed(lambda: subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 40 MiB model and 2,000 files")
    args = parser.parse_args()
    shapes, small_files = (
        (transformer(8192, 256, 10), 2000) if args.quick else (transformer(50257, 1024, 18), 20000)
    )
    tensor_mib = np.prod(shapes[ONE_TENSOR]) * 4 / MiB
    with tempfile.TemporaryDirectory(prefix="modelkitfs-bench-") as temp:
        base = Path(temp)
        bench = Bench(base)
        source = base / "src"
        source.mkdir()
        print("building the kits", flush=True)
        make_source(source, shapes, small_files)
        kitfile = {
            "manifestVersion": "1.0.0",
            "model": {"name": "bench", "path": MODEL},
            "datasets": [{"name": "small", "path": "data"}],
        }
        plain = build_modelkit(source, kitfile)
        layers = json.loads(plain.manifest)["layers"]
        model_digest, data_digest = layers[0]["digest"], layers[1]["digest"]
        layer_tar = base / "model-layer.tar"
        layer_tar.write_bytes(plain.blobs[model_digest])
        (base / "registry").mkdir()
        with running_registry(base / "registry") as registry:
            push(registry, "bench/kit", "plain", plain)
            del plain
            push(registry, "bench/kit", "gzip", build_modelkit(source, kitfile, compression="gzip"))
            loopback(bench, registry, source, model_digest, data_digest, layer_tar, tensor_mib)
            with LinkProxy(registry) as link:
                object_link(bench, link, model_digest, data_digest, tensor_mib)
        print(json.dumps({name: round(value, 3) for name, value, _, _ in bench.rows}))


def loopback(
    bench: Bench,
    registry: str,
    source: Path,
    model_digest: str,
    data_digest: str,
    layer_tar: Path,
    tensor_mib: float,
) -> None:
    print(f"loopback: the registry at {registry}", flush=True)
    ref = f"{registry}/bench/kit:plain"
    size = (source / MODEL).stat().st_size / MiB
    server = registry_pid(bench)
    cpu = CpuUse({"registry": server, "curl": None})
    curl_s = curl(f"http://{registry}/v2/bench/kit/blobs/{model_digest}")
    bench.add("curl of the model blob", size / curl_s, "MiB/s", cpu.stop(size))
    local_s = min(timed(lambda: read_all(source / MODEL)) for _ in range(2))
    bench.add("cat of the local file (page cache)", size / local_s, "MiB/s")

    with bench.mounted(ref, "cold") as mnt:
        pid = daemon_pid(mnt)
        rss = PeakRss(pid)
        cpu = CpuUse({"registry": server, "daemon": pid, "reader": os.getpid()})
        cold_s = timed(lambda: read_all(mnt / MODEL))
        cold_cpu = cpu.stop(size)
        peak_stream = rss.stop()
        reread_s = timed(lambda: read_all(mnt / MODEL))
        folios = folio_kib(mnt / MODEL, 64 * MiB), folio_kib(source / MODEL, 64 * MiB)
    bench.add(
        "1 cold sequential read",
        size / cold_s,
        "MiB/s",
        f"{curl_s / cold_s:.2f}x curl (0.5); {cold_cpu}",
    )
    bench.add(
        "4 re-read, same mount", size / reread_s, "MiB/s", f"{local_s / reread_s:.2f}x cat (0.8)"
    )
    if None not in folios:
        bench.add("4 page-cache folio, mount", folios[0], "KiB", f"local file: {folios[1]:.0f} KiB")
    with bench.mounted(ref, "cold") as mnt:
        cpu = CpuUse({"daemon": daemon_pid(mnt), "reader": os.getpid()})
        warm_s = timed(lambda: read_all(mnt / MODEL))
        warm_cpu = cpu.stop(size)
    ratarmount = ratarmount_read(bench.base, layer_tar, size)
    rat_note = f"{ratarmount[0] / warm_s:.2f}x ratarmount (1.0), " if ratarmount else ""
    bench.add(
        "3 warm read, new mount",
        size / warm_s,
        "MiB/s",
        f"{rat_note}{local_s / warm_s:.2f}x cat (0.35); {warm_cpu}",
    )
    if ratarmount:
        rat_s, rat_cpu = ratarmount
        bench.add("ratarmount of the layer tar on disk", size / rat_s, "MiB/s", rat_cpu)

    with bench.mounted(ref, "ttfb") as mnt:
        before = stats(mnt)["requests"]
        ttfb = timed(lambda: read_head(mnt / MODEL))
        bench.add(
            "6 time to first byte (open + 4 KiB)",
            ttfb * 1000,
            "ms",
            f"{stats(mnt)['requests'] - before} requests (3)",
        )

    safetensors_figures(bench, ref, "st", curl_s, size / cold_s, tensor_mib)

    with bench.mounted(ref, "random") as mnt:
        rss = PeakRss(daemon_pid(mnt))
        blocks = int(size) - 1

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            with open(mnt / MODEL, "rb", buffering=0) as f:
                for _ in range(16):
                    os.pread(f.fileno(), MiB, rng.randrange(blocks) * MiB)

        random_s = timed(lambda: list(ThreadPoolExecutor(16).map(reader, range(16))))
        peak_random = rss.stop()
    bench.add("7 daemon RSS peak, streaming", peak_stream, "MiB", "(200)")
    bench.add(
        "7 daemon RSS peak, 16 random readers",
        peak_random,
        "MiB",
        f"{256 / random_s:.0f} MiB/s read (200)",
    )

    listing_figures(bench, registry, data_digest, "ls")

    gz = f"{registry}/bench/kit:gzip"
    with bench.mounted(gz, "gzip") as mnt:
        gzip_first = timed(lambda: read_all(mnt / MODEL))
    with bench.mounted(gz, "gzip") as mnt:
        gzip_warm = timed(lambda: read_all(mnt / MODEL))
    bench.add(
        "gzip layer, first read",
        size / gzip_first,
        "MiB/s",
        f"{cold_s / gzip_first:.2f}x plain cold",
    )
    bench.add(
        "gzip layer, re-read (new mount)",
        size / gzip_warm,
        "MiB/s",
        f"{warm_s / gzip_warm:.2f}x plain warm",
    )


def safetensors_figures(
    bench: Bench, ref: str, cache: str, curl_s: float, cold_rate: float, tensor_mib: float
) -> None:
    with bench.mounted(ref, f"{cache}-one") as mnt:
        before = stats(mnt)["fetched_bytes"]

        def one() -> None:
            with safe_open(mnt / MODEL, framework="numpy") as f:
                f.get_tensor(ONE_TENSOR)

        one_s = timed(one)
        fetched = (stats(mnt)["fetched_bytes"] - before) / MiB
    allowed = 1.1 * tensor_mib + 8
    bench.add("5 one tensor: MiB fetched", fetched, "MiB", f"allowed {allowed:.0f} (1.1x + 8 MiB)")
    bench.add("5 one tensor: time", one_s, "s", f"{one_s / curl_s:.2f}x whole download (0.1)")
    with bench.mounted(ref, f"{cache}-all") as mnt:

        def every() -> None:
            with safe_open(mnt / MODEL, framework="numpy") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    f.get_tensor(name)

        size = (mnt / MODEL).stat().st_size / MiB
        all_s = timed(every)
    bench.add(
        "5 every tensor, cold",
        size / all_s,
        "MiB/s",
        f"{size / all_s / cold_rate:.2f}x cold sequential (0.7)",
    )


def listing_figures(
    bench: Bench, registry: str, data_digest: str, cache: str, setting: str = ""
) -> None:
    data_s = curl(f"http://{registry}/v2/bench/kit/blobs/{data_digest}")
    ref = f"{registry}/bench/kit:plain"

    def walk() -> int:
        return sum(len(files) for _, _, files in os.walk(mnt / "data"))

    with bench.mounted(ref, cache) as mnt:
        ls_cold = timed(walk)
    with bench.mounted(ref, cache) as mnt:
        ls_cached = timed(walk)
    bench.add(
        f"8 {setting}ls -R of the small files, cold",
        ls_cold,
        "s",
        f"{ls_cold / data_s:.2f}x the layer's download (1.0)",
    )
    bench.add(f"8 {setting}ls -R, index cached, new mount", ls_cached, "s", "(0.5 s)")


def object_link(
    bench: Bench, proxy: LinkProxy, model_digest: str, data_digest: str, tensor_mib: float
) -> None:
    link = proxy.address
    print(f"object-storage link: {link} (30 ms, 50 MB/s per connection, 400 MB/s in all)")
    ref = f"{link}/bench/kit:plain"
    curl_s = curl(f"http://{link}/v2/bench/kit/blobs/{model_digest}")
    with bench.mounted(ref, "link-cold") as mnt:
        size = (mnt / MODEL).stat().st_size / MiB
        cpu = CpuUse(
            {
                "registry": registry_pid(bench),
                "link proxy": proxy.process.pid,
                "daemon": daemon_pid(mnt),
                "reader": os.getpid(),
            }
        )
        cold_s = timed(lambda: read_all(mnt / MODEL))
        cold_cpu = cpu.stop(size)
    rate = size / cold_s
    bench.add("link: curl, one stream", size / curl_s, "MiB/s")
    bench.add(
        "2 link: cold sequential read",
        rate,
        "MiB/s",
        f"{rate * MiB / 400e6:.2f}x the 400 MB/s cap (0.8), {curl_s / cold_s:.1f}x curl (6);"
        f" {cold_cpu}",
    )
    with bench.mounted(ref, "link-ttfb") as mnt:
        ttfb = timed(lambda: read_head(mnt / MODEL))
    bench.add("6 link: time to first byte", ttfb * 1000, "ms", "(150 ms)")
    safetensors_figures(bench, ref, "link-st", curl_s, rate, tensor_mib)
    listing_figures(bench, link, data_digest, "link-ls", "link: ")


def ratarmount_read(base: Path, layer_tar: Path, size: float) -> tuple[float, str] | None:
    """Seconds for ratarmount to read the model out of the layer tar on local disk (warm), and
    the CPU that cost."""
    binary = shutil.which("ratarmount") or str(Path(sys.executable).parent / "ratarmount")
    if not os.path.exists(binary):
        return None
    mountpoint = Path(tempfile.mkdtemp(dir=base))
    subprocess.run([binary, str(layer_tar), str(mountpoint)], check=True, capture_output=True)
    try:
        read_all(mountpoint / MODEL)  # warm its page cache and index, as ours is warm
        cpu = CpuUse({"ratarmount": process_with("ratarmount", str(mountpoint))})
        seconds = timed(lambda: read_all(mountpoint / MODEL))
        return seconds, cpu.stop(size)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


if __name__ == "__main__":
    main()
