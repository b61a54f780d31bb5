"""The on-disk cache, shared by every mount and process that uses the same directory.

Where it keeps what is in :mod:`~modelkitfs.cache.layout` (nothing is ever rewritten in place:
content never changes under a digest); how a file is written and checked in
:mod:`~modelkitfs.cache.blockfile`, the locks in :mod:`~modelkitfs.cache.locks`, eviction in
:mod:`~modelkitfs.cache.eviction`. Readers of finished blocks take no locks. A block's
modification time is its last use, to the minute, for eviction. A cache that cannot be written
(read-only, full, out of inodes) is still read; what cannot be written is skipped, with one
warning (:mod:`~modelkitfs.cache.health`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelkitfs.cache import records
from modelkitfs.cache.blockfile import (
    CHECKSUM,
    TEMP_PREFIX,
    Buffer,
    checksum,
    checksum_matches,
    read_file,
    read_into_buffer,
    write_atomic,
)
from modelkitfs.cache.eviction import evict
from modelkitfs.cache.health import WriteHealth, advice, describe
from modelkitfs.cache.layout import Layout
from modelkitfs.cache.locks import (
    BlockLocks,
    BlockPins,
    ProcessLock,
    claimed_elsewhere,
    live_processes,
    open_lock_file,
    range_lock,
    try_flock,
)
from modelkitfs.cache.pages import PageSpan, read_span

__all__ = ["CHECKSUM", "BlobEntry", "BlockLocks", "Buffer", "DiskCache"]

log = logging.getLogger(__name__)

TOUCH_SECONDS = 60  # a block's use is recorded once a minute at most


@dataclass(frozen=True)
class BlobEntry:
    """What the cache holds of one blob (or derived stream)."""

    digest: str
    blocks: int
    bytes: int
    last_used: float
    indexes: dict[int, frozenset[int]] = field(default_factory=dict)  # per block size


class DiskCache(Layout):
    """Blocks and sidecar files keyed by blob digest under ``root``. All methods block: call
    them from a worker thread, never from the event loop (except the pins, which only lock)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        self.health = WriteHealth(self.root)
        self.process = ProcessLock(self.root)
        self.pins = BlockPins()

    @property
    def name(self) -> str:
        return str(self.root)

    @property
    def writable(self) -> bool:
        """False for a while after a write failed: skip writing meanwhile."""
        return self.health.writable

    def cannot_write(self) -> str | None:
        fault = self.health.fault
        if fault is None:
            return None
        return f"it cannot be written ({describe(fault)}); {advice(self.root, fault)}"

    def pin(self, digest: str, block_size: int, index: int) -> None:
        self.pins.pin(self.lock_path(digest, block_size), index)

    def unpin(self, digest: str, block_size: int, index: int) -> None:
        self.pins.unpin(self.lock_path(digest, block_size), index)

    def register(self) -> None:
        """Take this process's lock: others then know it uses the cache (and keep its
        temporary files). Without a writable cache nothing is registered, nor needed."""
        try:
            self.process.acquire()
        except OSError as exc:
            self.health.failed(exc)

    def probe_write(self) -> OSError | None:
        """Why the cache cannot be written now (by taking this process's lock), or None.
        Logs nothing: for a command that fails with its own message instead."""
        try:
            self.process.acquire()
        except OSError as exc:
            return exc
        return None

    def other_processes(self) -> list[str]:
        """Ids of the other processes that use this cache now."""
        return [p for p in live_processes(self.root) if p != self.process.id]

    def write_file(self, path: Path, *parts: Buffer) -> None:
        started = time.monotonic()
        try:
            write_atomic(path, *parts, owner=self.process.acquire())
        except OSError as exc:
            self.health.failed(exc)
            raise
        self.health.succeeded(started)

    # --- blocks -----------------------------------------------------------------------------

    def read_block(
        self, digest: str, block_size: int, index: int, expected_size: int, *, keep: bool = False
    ) -> Buffer | None:
        """The block's bytes, or None when absent. A block whose size or checksum is wrong
        (a truncated or damaged file) is deleted, logged, and reported absent."""
        path = self.block_path(digest, block_size, index)
        found = read_into_buffer(path, keep=keep)
        if found is None:
            return None
        raw, mtime = found
        size = len(raw) - CHECKSUM
        if size != expected_size or not checksum_matches(raw[:size], raw[size:]):
            log.warning(
                "cached block %d of %s is damaged (%d bytes, checksum %s): downloading it again",
                index,
                digest,
                len(raw),
                "mismatch" if size == expected_size else "unchecked",
            )
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        # Recently used: evicted last. A use "in the future" (the clock went back) is set to
        # now too, else the block would keep its false date and never be touched again.
        if abs(time.time() - mtime) > TOUCH_SECONDS:
            with contextlib.suppress(OSError):
                os.utime(path)
        return raw[:size]  # without its checksum, and not copied

    def read_pages(self, pages: PageSpan, nowait: bool = False) -> bytes | None:
        """Bytes ``pages.span`` of a block checked before, by the pages holding them, each
        checked against ``pages.sums``; None when absent or damaged (see
        :mod:`~modelkitfs.cache.pages`). ``nowait``: BlockingIOError unless in the page cache."""
        path = f"{self._blob_dir('blocks', pages.digest)}/{pages.block_size}/{pages.index}"
        start, stop = pages.span
        return read_span(path, start, stop, pages.length, pages.sums, nowait=nowait)

    def read_block_size(self, digest: str, block_size: int, index: int) -> int | None:
        """The data size of a cached block (without reading it), or None when absent."""
        try:
            return self.block_path(digest, block_size, index).stat().st_size - CHECKSUM
        except FileNotFoundError:
            return None

    def has_block(self, digest: str, block_size: int, index: int) -> bool:
        return self.block_path(digest, block_size, index).is_file()

    def cached_blocks(self, digest: str, block_size: int, first: int, last: int) -> set[int]:
        """Which of blocks ``first`` to ``last`` are cached (not read, nor checked)."""
        folder = f"{self._blob_dir('blocks', digest)}/{block_size}/"  # a str: no Path per block
        return {i for i in range(first, last + 1) if os.path.isfile(folder + str(i))}

    def write_block(self, digest: str, block_size: int, index: int, data: Buffer) -> None:
        """Raises OSError when the cache cannot be written (warned about once)."""
        self.write_file(self.block_path(digest, block_size, index), data, checksum(data))

    def remove_blocks(self, digest: str) -> None:
        """Forget every cached block of ``digest`` (bytes found to be wrong)."""
        shutil.rmtree(self._blob_dir("blocks", digest), ignore_errors=True)

    def claim_run(
        self, digest: str, block_size: int, first: int, last: int, overtake: bool = False
    ) -> BlockLocks | None:
        """Download locks of blocks ``first``, ``first + 1``... up to ``last``, stopping at
        the first one that is claimed elsewhere (write-locked by another process or another
        claim here) or already cached. None when block ``first`` is cached; no block held
        while it is claimed elsewhere. ``overtake``: blocks claimed elsewhere are held all the
        same, without their lock (in ``overtaken``). A block under another's read lock is
        not claimed (any reader of the lock file can take one): it is held without its lock
        too. When the lock file cannot be created (a read-only or full cache) the claim holds
        the blocks for this process only: nothing would be written for others anyway."""
        try:
            fd = open_lock_file(self.lock_path(digest, block_size), os.O_RDWR)
        except OSError as exc:
            self.health.failed(exc)
            fd = -1
        locks = BlockLocks(fd)
        whole = fd >= 0 and range_lock(fd, fcntl.F_WRLCK, first, last - first + 1)
        stop = last + 1
        for index in range(first, last + 1):
            claimed = (
                fd >= 0
                and not whole
                and not range_lock(fd, fcntl.F_WRLCK, index, 1)
                and claimed_elsewhere(fd, index)
            )
            if claimed and not overtake:
                stop = index
                break
            if self.has_block(digest, block_size, index):
                if index == first:
                    locks.close()
                    return None
                stop = index
                break
            locks.held.add(index)
            if claimed:
                locks.overtaken.add(index)
        locks.release_from(stop)
        return locks

    # --- sidecar files ----------------------------------------------------------------------

    def read_meta(self, digest: str, name: str) -> bytes | None:
        return read_file(self.meta_path(digest, name))

    def write_meta(self, digest: str, name: str, data: bytes) -> None:
        self.write_file(self.meta_path(digest, name), data)

    def remove_meta(self, digest: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.meta_path(digest, name).unlink()

    # --- the whole cache --------------------------------------------------------------------

    def blobs(self) -> list[BlobEntry]:
        """What is cached, blob by blob, most recently used first."""
        found: dict[str, list[float]] = {}
        indexes: dict[str, dict[int, set[int]]] = {}
        for digest, size_name, entry in self.block_entries():
            if entry.name.startswith(TEMP_PREFIX) or not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError):
                info = entry.stat()
                row = found.setdefault(digest, [0, 0, 0.0])
                row[0] += 1
                row[1] += info.st_size
                row[2] = max(row[2], info.st_mtime)
                sizes = indexes.setdefault(digest, {})
                sizes.setdefault(int(size_name), set()).add(int(entry.name))
        rows = [
            BlobEntry(
                d,
                int(r[0]),
                int(r[1]),
                r[2],
                {size: frozenset(i) for size, i in indexes.get(d, {}).items()},
            )
            for d, r in found.items()
        ]
        return sorted(rows, key=lambda row: -row.last_used)

    def prune(self, max_bytes: int | None, min_free_bytes: int = 0) -> int:
        """Evict least recently used blocks, never pinned ones, until the cache is at most
        ``PRUNE_TO`` of ``max_bytes`` and the disk has ``min_free_bytes`` free; also removes
        temporary files whose writer is gone. Returns the bytes still cached. Only one process
        prunes at a time; the others return at once."""
        try:
            lock = try_flock(self.root / "locks" / "prune")
        except OSError as exc:
            self.health.failed(exc)
            return self.usage()
        if lock is None:
            return self.usage()
        try:
            return evict(self, max_bytes, min_free_bytes)
        finally:
            os.close(lock)  # releases the flock

    # --- records of the whole cache (see modelkitfs.cache.records) -------------------------

    def read_config(self) -> dict[str, int]:
        """What every process on this cache agrees on (its size cap)."""
        return records.read_config(self.root)

    def write_config(self, config: dict[str, int]) -> None:
        records.write_config(self.root, config, self.write_file)

    def read_stats(self) -> dict[str, int]:
        return records.read_stats(self.root)

    def add_stats(self, counters: dict[str, int]) -> None:
        """Add a finished mount's counters to the cache's running totals (see
        :func:`~modelkitfs.cache.records.add_stats`)."""
        records.add_stats(self.root, counters, self.write_file, self.health.failed)

    def clear(self) -> None:
        """Remove everything cached (what open mounts still need is downloaded again); the
        size cap stays. Raises the first OSError that left something behind."""
        errors: list[OSError] = []

        def failed(_function: object, _path: object, info: object) -> None:
            exc = info[1] if isinstance(info, tuple) else info
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                errors.append(exc)

        for kind in ("blocks", "meta", "locks"):
            if (self.root / kind).exists():
                shutil.rmtree(self.root / kind, onerror=failed)
        try:
            (self.root / records.STATS).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            errors.append(exc)
        if errors:
            raise errors[0]
