"""What the cache disk itself gives a warm sequential reader, beside the fio figures (issue 30).

A warm mount reads a blob's blocks from their 1 MiB block files by direct I/O: one device
request per block, several at once while it reads ahead. ratarmount reads the layer tar through
the page cache, where the kernel's readahead (the device's ``read_ahead_kb``) issues requests of
several MiB, several at once. These figures measure both ways of reading on the same disk, with
no FUSE and no Python on the path: a mount cannot read its blocks faster than the first, and
ratarmount's figure is bounded by the second. The third, direct reads of 4 MiB of the layer tar
two at once, is what a cache holding each blob in one file could ask the device for.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from bench_tools import Bench, MiB, drop_page_cache, timed

from modelkitfs.cache.disk import DiskCache


def _direct_reads(paths_and_offsets: list[tuple[Path, int]], size: int, at_once: int) -> float:
    """Seconds to read ``size`` bytes at each (path, offset) by direct I/O, ``at_once`` reads
    in flight."""

    def one(item: tuple[Path, int]) -> None:
        path, offset = item
        buffer = mmap.mmap(-1, size + mmap.PAGESIZE)  # page aligned, as direct I/O needs
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            os.preadv(fd, [buffer], offset)
        finally:
            os.close(fd)
            buffer.close()

    def every() -> None:
        with ThreadPoolExecutor(at_once) as pool:
            list(pool.map(one, paths_and_offsets))

    return timed(every)


def _buffered_in_order(path: Path) -> float:
    def every() -> None:
        with open(path, "rb", buffering=0) as f:
            while f.read(MiB):
                pass

    return timed(every)


def disk_figures(bench: Bench, cache_root: Path, layer_tar: Path) -> None:
    """The largest blob of the cache at ``cache_root`` read from its block files, and
    ``layer_tar`` read through the page cache and by large direct reads."""
    cache = DiskCache(cache_root)
    blob = max(cache.blobs(), key=lambda entry: entry.bytes)
    block_size, indexes = max(blob.indexes.items(), key=lambda item: len(item[1]))
    blocks = [(cache.block_path(blob.digest, block_size, i), 0) for i in sorted(indexes)]
    tar = layer_tar.stat().st_size
    slices = [(layer_tar, at) for at in range(0, tar, 4 * MiB)]
    runs: list[tuple[str, int, Callable[[], float]]] = [
        *(
            (f"direct 1 MiB reads of block files, {n} at once", blob.bytes,
             partial(_direct_reads, blocks, block_size, n))
            for n in (1, 2, 4)
        ),
        ("layer tar, 1 MiB reads in order through the page cache", tar,
         partial(_buffered_in_order, layer_tar)),
        ("layer tar, direct 4 MiB reads, 2 at once", tar,
         partial(_direct_reads, slices, 4 * MiB, 2)),
    ]  # fmt: skip
    for name, size, run in runs:
        drop_page_cache(cache_root, layer_tar.parent)
        bench.add(f"9 disk: {name}", size / MiB / run(), "MiB/s")
