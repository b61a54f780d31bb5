"""The ``prefetch`` and ``cache`` commands: running them and printing what they found."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import trio

from modelkitfs.blobs import DiskCache
from modelkitfs.blobs.budget import MIN_FREE_FRACTION, parse_size
from modelkitfs.blobs.cache import default_cache_dir
from modelkitfs.blobs.maintenance import cached_blobs, verify_blob
from modelkitfs.errors import ModelKitFSError
from modelkitfs.options import MountOptions
from modelkitfs.prefetch import Progress, prefetch

BAR = 30


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class _ProgressBar:
    """One line redrawn in place on a terminal; a line every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 5 and progress.layers_done < progress.layers:
            return
        self.last = now
        share = progress.bytes_done / progress.total_bytes if progress.total_bytes else 1.0
        filled = int(share * BAR)
        rate = progress.downloaded / progress.elapsed if progress.elapsed else 0.0
        line = (
            f"[{'#' * filled}{'-' * (BAR - filled)}] {share:4.0%}  "
            f"{human(progress.bytes_done)}/{human(progress.total_bytes)}  "
            f"layer {min(progress.layers_done + 1, progress.layers)}/{progress.layers}  "
            f"{human(rate)}/s"
        )
        print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=sys.stderr)


def run_prefetch(reference: str, options: MountOptions) -> None:
    options.cache_dir = os.path.abspath(options.cache_dir or default_cache_dir())
    bar = _ProgressBar()
    result = trio.run(prefetch, reference, options, bar)
    if bar.tty:
        print(file=sys.stderr)
    print(
        f"prefetched {result.reference}: {human(result.total_bytes)} in {result.layers} layers "
        f"({human(result.downloaded)} downloaded, the rest already cached), verified, into "
        f"{options.cache_dir}"
    )


def run_cache_command(action: str, cache_dir: str | None, max_size: str | None) -> None:
    root = Path(cache_dir or default_cache_dir())
    if action != "clear" and not root.is_dir():
        raise ModelKitFSError(f"there is no cache at {root} yet: mount or prefetch a kit first")
    cache = DiskCache(root)
    if action == "info":
        _info(cache)
    elif action == "ls":
        for blob in cached_blobs(cache):
            size = human(blob.size) if blob.size is not None else "?"
            state = "verified" if blob.verified else ("complete" if blob.complete else "partial")
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(blob.entry.last_used))
            cached = human(blob.entry.bytes)
            print(f"{blob.entry.digest}  {cached:>10} of {size:>10}  {state:8}  {used}")
    elif action == "verify":
        counts: dict[str, int] = {}
        for blob in cached_blobs(cache):
            status = verify_blob(cache, blob)
            counts[status] = counts.get(status, 0) + 1
            print(f"{blob.entry.digest}  {status}")
        print(
            ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "cache is empty"
        )
        if counts.get("corrupt"):
            raise ModelKitFSError(
                f"{counts['corrupt']} cached blob(s) were corrupt and are evicted: the next read "
                "downloads them again; check the disk if this repeats"
            )
    elif action == "prune":
        _, total = cache.free_bytes()
        cap = parse_size(max_size) if max_size else None
        left = cache.prune(cap, int(total * MIN_FREE_FRACTION))
        print(f"cache {root} now holds {human(left)}")
    else:
        cache.clear()
        print(f"cleared {root}")


def _info(cache: DiskCache) -> None:
    blobs = cached_blobs(cache)
    free, total = cache.free_bytes()
    stats = cache.read_stats()
    hits = stats.get("memory_hits", 0) + stats.get("disk_hits", 0)
    reads = hits + stats.get("downloaded_blocks", 0)
    ratio = f"{hits / reads:.1%} of {reads} block reads" if reads else "no finished mounts yet"
    print(f"cache     {cache.root}")
    print(f"size      {human(cache.usage())} ({human(free)} free of {human(total)})")
    print(
        f"blobs     {len(blobs)}: {sum(b.verified for b in blobs)} verified, "
        f"{sum(b.complete and not b.verified for b in blobs)} complete, "
        f"{sum(not b.complete for b in blobs)} partial"
    )
    print(f"hit ratio {ratio}")
    if stats.get("corrupt_blobs"):
        print(f"corrupt   {stats['corrupt_blobs']} blob(s) failed verification and were evicted")
