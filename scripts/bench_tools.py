"""What the benchmark's figures are made of: timing, reading, finding processes, the kit's
contents and the table. No figure lives here (see bench_figures.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from machine import CpuUse
from safetensors.numpy import save_file

from modelkitfs import MountOptions, mount, unmount

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


def registry_pid(bench: Bench, folder: str = "registry") -> int:
    """The registry storing under ``folder`` of the bench's temporary folder."""
    return process_with("serve", str(bench.base / folder))


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


def curl(url: str, *, follow: bool = False) -> float:
    """Seconds for curl to download ``url`` (following redirects with ``follow``)."""
    command = ["curl", "-sf", *(["-L"] if follow else []), "-o", "/dev/null", url]
    return timed(lambda: subprocess.run(command, check=True))


def evict_from_page_cache(folder: Path) -> None:
    """Drop the page cache's (clean) pages of every file under ``folder``: a warm read then
    reads the cache from disk, as it would once memory pressure took the pages, and the page
    cache's growth shows what the read itself costs."""
    os.sync()
    for path in folder.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


@contextlib.contextmanager
def ratarmounted(base: Path, tar: Path) -> Iterator[Path | None]:
    """``tar`` mounted by ratarmount (None where it is not installed)."""
    binary = shutil.which("ratarmount") or str(Path(sys.executable).parent / "ratarmount")
    if not os.path.exists(binary):
        yield None
        return
    mountpoint = Path(tempfile.mkdtemp(dir=base))
    subprocess.run([binary, str(tar), str(mountpoint)], check=True, capture_output=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


@contextlib.contextmanager
def floor_mounted(base: Path, source: Path) -> Iterator[Path]:
    """The files under ``source`` served from memory by the bare pyfuse3 filesystem of
    ``pyfuse3_floor.py``: the floor under any pyfuse3 filesystem's figures."""
    mountpoint = Path(tempfile.mkdtemp(dir=base))
    ready = Path(f"{mountpoint}.ready")
    script = Path(__file__).resolve().parent / "pyfuse3_floor.py"
    process = subprocess.Popen([sys.executable, str(script), str(source), str(mountpoint)])
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the pyfuse3 floor filesystem did not start")
            time.sleep(0.05)
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        process.wait(timeout=60)


def ratarmount_read(base: Path, layer_tar: Path, size: float) -> tuple[float, str] | None:
    """Seconds for ratarmount to read the model out of the layer tar on local disk (warm), and
    the CPU that cost."""
    with ratarmounted(base, layer_tar) as mountpoint:
        if mountpoint is None:
            return None
        read_all(mountpoint / MODEL)  # warm its page cache and index, as ours is warm
        cpu = CpuUse({"ratarmount": process_with("ratarmount", str(mountpoint))})
        seconds = timed(lambda: read_all(mountpoint / MODEL))
        return seconds, cpu.stop(size)


def drop_page_cache(*folders: Path) -> None:
    """Empty the page cache: all of it as root (``drop_caches``), else the pages of every
    file under ``folders``."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        for folder in folders:
            evict_from_page_cache(folder)


def wait_for_exit(pid: int, longest: float = 120) -> None:
    """Wait until process ``pid`` has ended (a daemon writing its last blocks after its
    unmount), at most ``longest`` seconds."""
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in "ZX":  # ended, not yet reaped
            return
        time.sleep(0.05)
