"""The on-disk cache, shared by every mount and process that uses the same directory.

Layout (content never changes under a digest, so nothing here is ever rewritten in place)::

    <root>/blocks/sha256/<hex[:2]>/<hex>/<block size>/<index>   a block of a blob + its checksum
    <root>/meta/sha256/<hex[:2]>/<hex>/<name>                   derived data, e.g. a tar index
    <root>/locks/sha256/<hex[:2]>/<hex>/<block size>.lock      byte i: block i is downloading

Every file is written to a private temporary name in the same directory and renamed into place,
so a reader (in this process or another) sees a whole file or none, even if the writer is killed.
Each block file ends with a checksum of its bytes, checked on every read: a truncated or flipped
file is deleted and downloaded again. The checksum is the low 32 bits of XXH3-64 (CRC-32 in files
of earlier versions, still accepted): on warm reads CRC-32 took a sixth of the daemon's CPU, 0.25
ms per MiB against 0.02. Readers of finished blocks take no locks; a process about to download
blocks locks their bytes in the blob's lock file (open file description locks: one call for a
run of blocks, no file per block, and they die with the process), so others wait for that
download instead of repeating it. A block's modification time is its last use, to the minute,
for eviction.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

Buffer = bytes | bytearray | memoryview

log = logging.getLogger(__name__)

CHECKSUM = 4  # bytes of checksum after a block's data
STALE_TEMP_SECONDS = 600
TOUCH_SECONDS = 60  # a block's use is recorded once a minute at most
PRUNE_TO = 0.9  # evict down to this share of the cap, so one prune serves many writes


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


@dataclass(frozen=True)
class BlobEntry:
    """What the cache holds of one blob (or derived stream)."""

    digest: str
    blocks: int
    bytes: int
    last_used: float


class DiskCache:
    """Blocks and sidecar files keyed by blob digest under ``root``. All methods block: call
    them from a worker thread, never from the event loop."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._nowait_reads = True  # until the file system refuses RWF_NOWAIT (NFS, say)

    def _blob_dir(self, kind: str, digest: str) -> Path:
        algorithm, hexpart = _split(digest)
        return self.root / kind / algorithm / hexpart[:2] / hexpart

    def block_path(self, digest: str, block_size: int, index: int) -> Path:
        return self._blob_dir("blocks", digest) / str(block_size) / str(index)

    def meta_path(self, digest: str, name: str) -> Path:
        return self._blob_dir("meta", digest) / name

    # --- blocks -----------------------------------------------------------------------------

    def read_block(
        self,
        digest: str,
        block_size: int,
        index: int,
        expected_size: int,
        *,
        nowait: bool = False,
    ) -> bytearray | None:
        """The block's bytes, or None when absent. A block whose size or checksum is wrong
        (a truncated or damaged file) is deleted, logged, and reported absent. With ``nowait``
        the bytes must be in the page cache: else this raises ``BlockingIOError`` rather than
        wait for the disk, so that it may run on an event loop."""
        path = self.block_path(digest, block_size, index)
        if nowait and not self._nowait_reads:
            raise BlockingIOError(errno.EAGAIN, "the file system cannot read without waiting")
        try:
            found = _read_into_buffer(path, nowait)
        except OSError as exc:
            if not nowait or exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self._nowait_reads = False
            raise BlockingIOError(
                errno.EAGAIN, "the file system cannot read without waiting"
            ) from exc
        if found is None:
            return None
        raw, mtime = found
        size = len(raw) - CHECKSUM
        body = memoryview(raw)[:size] if size >= 0 else memoryview(b"")
        if size != expected_size or not _checksum_matches(body, raw[size:]):
            body.release()
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
        body.release()
        del raw[size:]  # drop the checksum in place: no copy of the block
        if time.time() - mtime > TOUCH_SECONDS:
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: evicted last
        return raw

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
        _write_atomic(self.block_path(digest, block_size, index), data, _checksum(data))

    def remove_blocks(self, digest: str) -> None:
        """Forget every cached block of ``digest`` (bytes found to be wrong)."""
        shutil.rmtree(self._blob_dir("blocks", digest), ignore_errors=True)

    def claim_run(self, digest: str, block_size: int, first: int, last: int) -> BlockLocks | None:
        """Download locks of blocks ``first``, ``first + 1``... up to ``last``, stopping at
        the first one that is locked elsewhere (by another process or another claim here) or
        already cached. None when block ``first`` is cached; no block held while it is locked
        elsewhere."""
        path = self._blob_dir("locks", digest) / f"{block_size}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        locks = BlockLocks(fd)
        whole = _range_lock(fd, fcntl.F_WRLCK, first, last - first + 1)
        stop = last + 1
        for index in range(first, last + 1):
            if not whole and not _range_lock(fd, fcntl.F_WRLCK, index, 1):
                stop = index
                break
            if self.has_block(digest, block_size, index):
                if index == first:
                    locks.close()
                    return None
                stop = index
                break
            locks.held.add(index)
        locks.release_from(stop)
        return locks

    # --- sidecar files ----------------------------------------------------------------------

    def read_meta(self, digest: str, name: str) -> bytes | None:
        return _read(self.meta_path(digest, name))

    def write_meta(self, digest: str, name: str, data: bytes) -> None:
        _write_atomic(self.meta_path(digest, name), data)

    def remove_meta(self, digest: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.meta_path(digest, name).unlink()

    # --- the whole cache --------------------------------------------------------------------

    def _block_files(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """Every block file, with the digest it belongs to."""
        top = self.root / "blocks"
        for algorithm in _scandir(top):
            for prefix in _scandir(Path(algorithm.path)):
                for blob in _scandir(Path(prefix.path)):
                    digest = f"{algorithm.name}:{blob.name}"
                    for size_dir in _scandir(Path(blob.path)):
                        for entry in _scandir(Path(size_dir.path)):
                            yield digest, entry

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
        for digest, entry in self._block_files():
            with contextlib.suppress(OSError):
                info = entry.stat()
                if not entry.name.startswith(".tmp-"):
                    found.setdefault(digest, [0, 0, 0.0])
                    row = found[digest]
                    row[0] += 1
                    row[1] += info.st_size
                    row[2] = max(row[2], info.st_mtime)
        rows = [BlobEntry(d, int(r[0]), int(r[1]), r[2]) for d, r in found.items()]
        return sorted(rows, key=lambda row: -row.last_used)

    def free_bytes(self) -> tuple[int, int]:
        """Free and total bytes of the file system the cache lives on."""
        self.root.mkdir(parents=True, exist_ok=True)
        info = os.statvfs(self.root)
        return info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize

    def prune(self, max_bytes: int | None, min_free_bytes: int = 0) -> int:
        """Evict least recently used blocks until the cache is at most ``PRUNE_TO`` of
        ``max_bytes`` and the disk has ``min_free_bytes`` free; also removes temporary files
        that killed writers left. Returns the bytes still cached. Only one process prunes at a
        time; the others return at once."""
        lock = self._try_lock(self.root / "locks" / "prune")
        if lock is None:
            return self.usage()
        try:
            now = time.time()
            blocks: list[tuple[float, int, str]] = []
            for _, entry in self._block_files():
                with contextlib.suppress(OSError):
                    info = entry.stat()
                    if entry.name.startswith(".tmp-"):
                        if now - info.st_mtime > STALE_TEMP_SECONDS:
                            os.unlink(entry.path)
                        continue
                    blocks.append((info.st_mtime, info.st_size, entry.path))
            total = sum(size for _, size, _ in blocks)
            excess = total - int(max_bytes * PRUNE_TO) if max_bytes is not None else 0
            free, _ = self.free_bytes()
            need = max(excess, min_free_bytes - free, 0)
            blocks.sort()
            freed = 0
            for _, size, path in blocks:
                if freed >= need:
                    break
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    freed += size
            if freed:
                log.info("evicted %d bytes of least recently used blocks", freed)
            return total - freed
        finally:
            os.close(lock)  # releases the flock

    def add_stats(self, counters: dict[str, int]) -> None:
        """Add a finished mount's counters to the cache's running totals (``stats.json``)."""
        lock = None
        while lock is None:
            lock = self._try_lock(self.root / "locks" / "stats")
            if lock is None:
                time.sleep(0.01)
        try:
            totals = self.read_stats()
            for key, value in counters.items():
                totals[key] = totals.get(key, 0) + int(value)
            _write_atomic(self.root / "stats.json", json.dumps(totals).encode())
        finally:
            os.close(lock)  # releases the flock

    def read_stats(self) -> dict[str, int]:
        raw = _read(self.root / "stats.json")
        try:
            totals = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return {k: int(v) for k, v in totals.items()} if isinstance(totals, dict) else {}

    def clear(self) -> None:
        """Remove everything cached (what open mounts still need is downloaded again)."""
        for kind in ("blocks", "meta", "locks"):
            shutil.rmtree(self.root / kind, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.root / "stats.json").unlink()

    def _try_lock(self, path: Path) -> int | None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd


class BlockLocks:
    """Download locks held on blocks of one blob; the lock file closes with the last."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.held: set[int] = set()

    def release(self, index: int) -> None:
        if index in self.held:
            self.held.discard(index)
            _range_lock(self.fd, fcntl.F_UNLCK, index, 1)
            if not self.held:
                self.close()

    def release_from(self, first: int) -> None:
        """Release every held block from ``first`` on (all of them when none is left)."""
        _range_lock(self.fd, fcntl.F_UNLCK, first, 0)  # length 0: to the end of the file
        self.held = {i for i in self.held if i < first}
        if not self.held:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases whatever is left
            self.fd = -1


def _range_lock(fd: int, kind: int, start: int, length: int) -> bool:
    """Take (or with F_UNLCK drop) an open file description lock on ``length`` bytes from
    ``start``, without waiting; False when another holds part of it."""
    if fd < 0:
        return kind == fcntl.F_UNLCK
    request = struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except (BlockingIOError, PermissionError):  # EAGAIN, or EACCES on some systems
        return False
    return True


_FLOCK = "hhqqi4x"  # struct flock: l_type, l_whence, l_start, l_len, l_pid


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _checksum(data: Buffer) -> bytes:
    return (xxhash.xxh3_64_intdigest(data) & 0xFFFFFFFF).to_bytes(CHECKSUM, "big")


def _checksum_matches(data: memoryview, trailer: Buffer) -> bool:
    return _checksum(data) == trailer or zlib.crc32(data).to_bytes(CHECKSUM, "big") == trailer


def _read_into_buffer(path: Path, nowait: bool = False) -> tuple[bytearray, float] | None:
    """A file's bytes and modification time; None when absent. With ``nowait``, raises
    ``BlockingIOError`` unless every byte is in the page cache."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        buffer = bytearray(info.st_size)
        if nowait:
            if os.preadv(fd, [buffer], 0, os.RWF_NOWAIT) != info.st_size:
                raise BlockingIOError(errno.EAGAIN, "partly in the page cache", str(path))
            return buffer, info.st_mtime
        with memoryview(buffer) as view:
            got = 0
            while got < len(view) and (n := os.preadv(fd, [view[got:]], got)):
                got += n
        del buffer[got:]
        return buffer, info.st_mtime
    finally:
        os.close(fd)


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, *parts: Buffer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[f.write(view) :]
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
