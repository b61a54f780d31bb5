"""Evicting blocks from the shared cache, least recently used first, never one in use.

A block's modification time is its last use (to the minute). Clocks jump, so neither order nor
safety rests on it alone:

- a block in use by any process (pinned, see :mod:`modelkitfs.cache.locks`) is never evicted;
- a block whose last use lies in the future (the clock went back since) is taken as older than
  any block used since: it is evicted first, not kept for ever;
- a temporary file is removed when the process that writes it is gone (its process lock is
  free), whatever its age: a clock jumping forward does not make a write in flight look stale.
  Temporary files of earlier versions, without a writer id, still go by age.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

from modelkitfs.cache.blockfile import TEMP_PREFIX, temp_owner
from modelkitfs.cache.layout import Layout
from modelkitfs.cache.locks import pinned_blocks, process_alive

log = logging.getLogger(__name__)

PRUNE_TO = 0.9  # evict down to this share of the cap, so one prune serves many writes
LEGACY_STALE_SECONDS = 600  # temporary files without a writer id (earlier versions)
FUTURE_SLACK = 120  # seconds of clock skew before a use counts as "in the future"


@dataclass(frozen=True)
class _Block:
    mtime: float
    size: int
    path: str
    digest: str
    block_size: str
    index: int


def _remove_stale_temp(cache: Layout, entry: os.DirEntry[str], now: float) -> None:
    owner = temp_owner(entry.name)
    if owner is not None:
        stale = not process_alive(cache.root, owner)
    else:
        stale = abs(now - entry.stat().st_mtime) > LEGACY_STALE_SECONDS
    if stale:
        os.unlink(entry.path)


def collect_blocks(cache: Layout) -> list[_Block]:
    """Every block file of the cache; temporary files whose writer is gone are removed."""
    now = time.time()
    blocks = []
    for digest, block_size, entry in cache.block_entries():
        with contextlib.suppress(OSError, ValueError):
            if entry.name.startswith(TEMP_PREFIX):
                _remove_stale_temp(cache, entry, now)
                continue
            info = entry.stat()
            blocks.append(
                _Block(info.st_mtime, info.st_size, entry.path, digest, block_size, int(entry.name))
            )
    return blocks


def eviction_order(blocks: list[_Block], now: float) -> list[_Block]:
    """Blocks in the order they go: those last used "in the future" first, then the least
    recently used."""
    return sorted(blocks, key=lambda b: (b.mtime <= now + FUTURE_SLACK, b.mtime))


def evict(cache: Layout, max_bytes: int | None, min_free_bytes: int) -> int:
    """Evict until the blocks take at most ``PRUNE_TO`` of ``max_bytes`` and the disk has
    ``min_free_bytes`` free, skipping pinned blocks. Returns the bytes of blocks left. Call
    with the cache's prune lock held."""
    blocks = collect_blocks(cache)
    total = sum(block.size for block in blocks)
    excess = total - int(max_bytes * PRUNE_TO) if max_bytes is not None else 0
    free, _ = cache.free_bytes()
    need = max(excess, min_free_bytes - free, 0)
    if need <= 0:
        return total
    pins: dict[tuple[str, str], set[int]] = {}
    by_blob: dict[tuple[str, str], list[int]] = {}
    for block in blocks:
        by_blob.setdefault((block.digest, block.block_size), []).append(block.index)
    freed = evicted = kept = 0
    for block in eviction_order(blocks, time.time()):
        if freed >= need:
            break
        key = (block.digest, block.block_size)
        if key not in pins:
            path = cache.lock_path(block.digest, int(block.block_size))
            pins[key] = pinned_blocks(path, by_blob[key])
        if block.index in pins[key]:
            kept += block.size
            continue
        with contextlib.suppress(OSError):
            os.unlink(block.path)
            freed += block.size
            evicted += 1
    if freed or kept:
        (log.info if freed else log.debug)(
            "cache %s: evicted %d blocks (%d bytes) least recently used%s",
            cache.root,
            evicted,
            freed,
            f"; kept {kept} bytes in use by mounts" if kept else "",
        )
    return total - freed
