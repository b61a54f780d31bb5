"""The on-disk cache, shared by every mount and process that uses the same directory.

Layout (content never changes under a digest, so nothing here is ever rewritten in place)::

    <root>/blocks/sha256/<hex[:2]>/<hex>/<block size>/<index>   a block of a blob + its checksum
    <root>/meta/sha256/<hex[:2]>/<hex>/<name>                   derived data, e.g. a tar index
    <root>/locks/sha256/<hex[:2]>/<hex>/<block size>.lock      download locks and pins
    <root>/locks/procs/<id>                                    held by each process using it
    <root>/cache.json                                          its size cap, for every process

How a file is written and checked is in :mod:`~modelkitfs.blobs.blockfile`, the locks in
:mod:`~modelkitfs.blobs.locks`, eviction in :mod:`~modelkitfs.blobs.eviction`. Readers of
finished blocks take no locks. A block's modification time is its last use, to the minute, for
eviction. A cache that cannot be written (read-only, full, out of inodes) is still read; what
cannot be written is skipped, with one warning (:mod:`~modelkitfs.blobs.health`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from modelkitfs.blobs import records
from modelkitfs.blobs.blockfile import (
    CHECKSUM,
    TEMP_PREFIX,
    Buffer,
    checksum,
    checksum_matches,
    read_file,
    read_into_buffer,
    write_atomic,
)
from modelkitfs.blobs.eviction import evict
from modelkitfs.blobs.health import WriteHealth, advice, describe
from modelkitfs.blobs.locks import (
    BlockLocks,
    BlockPins,
    ProcessLock,
    claimed_elsewhere,
    live_processes,
    open_lock_file,
    range_lock,
    try_flock,
)
from modelkitfs.blobs.pages import Sums, read_span

__all__ = ["CHECKSUM", "BlobEntry", "BlockLocks", "Buffer", "DiskCache", "default_cache_dir"]

log = logging.getLogger(__name__)

TOUCH_SECONDS = 60  # a block's use is recorded once a minute at most


def default_cache_dir() -> Path:
    """``$MODELKITFS_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelkitfs``, else
    ``~/.cache/modelkitfs``."""
    if explicit := os.environ.get("MODELKITFS_CACHE_DIR"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "modelkitfs"


_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9]{32,}")


def _split(digest: str) -> tuple[str, str]:
    """``algorithm:hex``; the algorithm may carry OCI's separators (``sha256+zstd``), which
    this cache uses to name bytes derived from a blob."""
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"malformed digest {digest!r}")
    algorithm, _, hexpart = digest.partition(":")
    return algorithm, hexpart


@functools.lru_cache(maxsize=4096)
def _blob_dir(root: Path, kind: str, digest: str) -> Path:
    """Where ``kind`` (blocks, meta, locks) of ``digest`` live: remembered, as every pin and
    read asks (building the path took a tenth of the daemon's time on small reads)."""
    algorithm, hexpart = _split(digest)
    return root / kind / algorithm / hexpart[:2] / hexpart


@dataclass(frozen=True)
class BlobEntry:
    """What the cache holds of one blob (or derived stream)."""

    digest: str
    blocks: int
    bytes: int
    last_used: float
    indexes: dict[int, frozenset[int]] = field(default_factory=dict)  # per block size


class DiskCache:
    """Blocks and sidecar files keyed by blob digest under ``root``. All methods block: call
    them from a worker thread, never from the event loop (except the pins, which only lock)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.health = WriteHealth(self.root)
        self.process = ProcessLock(self.root)
        self.pins = BlockPins()

    def _blob_dir(self, kind: str, digest: str) -> Path:
        return _blob_dir(self.root, kind, digest)

    def block_path(self, digest: str, block_size: int, index: int) -> Path:
        return self._blob_dir("blocks", digest) / str(block_size) / str(index)

    def meta_path(self, digest: str, name: str) -> Path:
        return self._blob_dir("meta", digest) / name

    def lock_path(self, digest: str, block_size: int) -> Path:
        return self._blob_dir("locks", digest) / f"{block_size}.lock"

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
        self, digest: str, block_size: int, index: int, expected_size: int
    ) -> Buffer | None:
        """The block's bytes, or None when absent. A block whose size or checksum is wrong
        (a truncated or damaged file) is deleted, logged, and reported absent."""
        path = self.block_path(digest, block_size, index)
        found = read_into_buffer(path)
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

    def read_pages(
        self,
        digest: str,
        block_size: int,
        index: int,
        span: tuple[int, int],
        length: int,
        sums: Sums,
        nowait: bool = False,
    ) -> bytes | None:
        """Bytes ``span`` of a block of ``length`` bytes checked before, by the pages holding
        them, each checked against ``sums``; None when absent or damaged (see
        :mod:`~modelkitfs.blobs.pages`). ``nowait``: BlockingIOError unless in the page cache."""
        path = f"{self._blob_dir('blocks', digest)}/{block_size}/{index}"
        return read_span(path, span[0], span[1], length, sums, nowait=nowait)

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
        directory = self._blob_dir("blocks", digest) / str(block_size)
        return {i for i in range(first, last + 1) if os.path.isfile(directory / str(i))}

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

    def block_entries(self) -> Iterator[tuple[str, str, os.DirEntry[str]]]:
        """Every file under ``blocks``: digest, block size folder, entry."""
        top = self.root / "blocks"
        for algorithm in _scandir(top):
            for prefix in _scandir(Path(algorithm.path)):
                for blob in _scandir(Path(prefix.path)):
                    digest = f"{algorithm.name}:{blob.name}"
                    for size_dir in _scandir(Path(blob.path)):
                        for entry in _scandir(Path(size_dir.path)):
                            yield digest, size_dir.name, entry

    def usage(self) -> int:
        """Bytes the cache holds on disk (blocks and sidecars)."""
        total = 0
        for kind in ("blocks", "meta"):
            for directory, _, files in os.walk(self.root / kind):
                for name in files:
                    with contextlib.suppress(OSError):
                        total += os.stat(os.path.join(directory, name)).st_size
        return total

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

    def free_bytes(self) -> tuple[int, int]:
        """Free and total bytes of the file system the cache lives on (or would)."""
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        info = os.statvfs(path)
        return info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize

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

    # --- records of the whole cache (see modelkitfs.blobs.records) -------------------------

    read_config = records.read_config
    write_config = records.write_config
    add_stats = records.add_stats
    read_stats = records.read_stats

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


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []
