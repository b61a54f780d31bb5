"""Where the shared cache keeps what, under its folder: paths by digest, and walks over them.

Layout (content never changes under a digest, so nothing here is ever rewritten in place)::

    <root>/blocks/sha256/<hex[:2]>/<hex>/<block size>/<index>   a block of a blob + its checksum
    <root>/meta/sha256/<hex[:2]>/<hex>/<name>                   derived data, e.g. a tar index
    <root>/locks/sha256/<hex[:2]>/<hex>/<block size>.lock      download locks and pins
    <root>/locks/procs/<id>                                    held by each process using it
    <root>/cache.json                                          its size cap, for every process

Kept apart from the cache's reads and writes (:mod:`~modelkitfs.cache.disk`) so that eviction
and the folder's records, which walk and name these paths, need only this.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path


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


@functools.lru_cache(maxsize=4096)
def _lock_path(root: Path, digest: str, block_size: int) -> Path:
    """Remembered as :func:`_blob_dir` is: a block is pinned and unpinned as it enters and
    leaves memory, several times a MiB read."""
    return _blob_dir(root, "locks", digest) / f"{block_size}.lock"


class Layout:
    """The paths of a cache folder at ``root``, and walks over what it holds."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _blob_dir(self, kind: str, digest: str) -> Path:
        return _blob_dir(self.root, kind, digest)

    def block_path(self, digest: str, block_size: int, index: int) -> Path:
        return self._blob_dir("blocks", digest) / str(block_size) / str(index)

    def meta_path(self, digest: str, name: str) -> Path:
        return self._blob_dir("meta", digest) / name

    def lock_path(self, digest: str, block_size: int) -> Path:
        return _lock_path(self.root, digest, block_size)

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

    def free_bytes(self) -> tuple[int, int]:
        """Free and total bytes of the file system the cache lives on (or would)."""
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        info = os.statvfs(path)
        return info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []
