"""What the machine spends on a figure, so a bench run shows what bounds it: CPU time per
process (a cold read on loopback shares two cores between the registry, the daemon and the
reader), and the size of the page cache's folios (a re-read never reaches the daemon: the
kernel copies from its own pages, and from pages of 4 KiB, all FUSE has before Linux gives it
large folios, at well under half the speed it copies from a local file's 2 MiB folios), and
how much the page cache grows per byte read."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import resource
import struct
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE = mmap.PAGESIZE
_TAIL = 1 << 16  # KPF_COMPOUND_TAIL in /proc/kpageflags: a page inside a folio, not its first


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user and system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_until_idle(pid: int, quiet: float = 0.5, longest: float = 60) -> None:
    """Wait until the process has used under 10 ms of CPU in ``quiet`` seconds (at most
    ``longest`` seconds in all)."""
    deadline = time.monotonic() + longest
    before = process_cpu(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = process_cpu(pid)
        if now - before < 0.01:
            return
        before = now


def busy_cores() -> float:
    """Seconds of CPU used by the whole machine since boot (all cores, idle time left out)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuUse:
    """CPU seconds used between construction and ``stop`` by named processes (``None`` for
    this process's waited-for children: curl) and by the machine as a whole."""

    def __init__(self, processes: dict[str, int | None]) -> None:
        self.processes = processes
        os.sync()  # what the disk still has to write belongs to what came before
        self._start = self._sample()

    def _sample(self) -> dict[str, float]:
        sample = {
            name: process_cpu(pid) if pid else children_cpu()
            for name, pid in self.processes.items()
        }
        sample["machine"] = busy_cores()
        return sample

    def stop(self, mib: float, settle: str | None = None) -> str:
        """Milliseconds of CPU per MiB moved, per process and in all, and the rate the machine
        could reach at that cost with every core busy. With ``settle``, once that process has
        finished the work the transfer left it (a cold read's verification of the blob)."""
        if settle is not None and (pid := self.processes[settle]) is not None:
            wait_until_idle(pid)
        end = self._sample()
        used = {name: end[name] - self._start[name] for name in end}
        per_mib = {name: 1000 * seconds / mib for name, seconds in used.items()}
        parts = ", ".join(f"{name} {per_mib[name]:.1f}" for name in self.processes)
        cores = os.cpu_count() or 1
        return (
            f"ms of CPU per MiB: {parts}; machine {per_mib['machine']:.1f}, "
            f"at most {cores * 1000 / per_mib['machine']:.0f} MiB/s on {cores} cores"
        )


def folio_kib(path: Path, size: int) -> float | None:
    """Mean size of the page-cache folios holding the first ``size`` bytes of ``path`` (which
    must be cached), in KiB; None where page frames cannot be read (not root)."""
    pages = min(size, path.stat().st_size) // PAGE
    with contextlib.ExitStack() as stack:
        try:
            pagemap, flags = (
                stack.enter_context(open(name, "rb", buffering=0))
                for name in ("/proc/self/pagemap", "/proc/kpageflags")
            )
        except OSError:
            return None
        source = stack.enter_context(open(path, "rb"))
        # A private mapping shares the page cache's frames until written, which it is not.
        mapped = stack.enter_context(
            mmap.mmap(source.fileno(), pages * PAGE, access=mmap.ACCESS_COPY)
        )
        for page in range(pages):
            mapped[page * PAGE]  # fault it in
        first = _address(mapped) // PAGE
        entries = struct.unpack(f"{pages}Q", os.pread(pagemap.fileno(), pages * 8, first * 8))
        frames = [entry & ((1 << 55) - 1) for entry in entries if entry >> 63]
        if len(frames) < pages or not all(frames):
            return None
        tails = sum(
            bool(struct.unpack("Q", os.pread(flags.fileno(), 8, frame * 8))[0] & _TAIL)
            for frame in frames
        )
    return pages * PAGE / 1024 / (pages - tails)


def _address(mapped: mmap.mmap) -> int:
    first = ctypes.c_char.from_buffer(mapped)
    address = ctypes.addressof(first)
    del first  # an exported buffer would keep the mapping from closing
    return address


def page_cache_bytes() -> int:
    """Bytes in the page cache now (``Cached:`` of /proc/meminfo)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    return 0


class PageCacheGrowth:
    """How much the page cache grew between construction and ``per_byte(n)``, per byte read:
    1.0 when each byte read is cached once; 2.0 when the cache file's pages and the FUSE
    file's pages both hold it. Other processes' files count too: a rough figure on a busy
    machine, which is why the bench prints it beside its baseline."""

    def __init__(self) -> None:
        os.sync()
        self._start = page_cache_bytes()

    def per_byte(self, nbytes: float) -> float:
        return (page_cache_bytes() - self._start) / nbytes
