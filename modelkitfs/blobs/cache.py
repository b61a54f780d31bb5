"""The on-disk cache, shared by every mount and process that uses the same directory.

Layout (content never changes under a digest, so nothing here is ever rewritten in place)::

    <root>/blocks/sha256/<hex[:2]>/<hex>/<block size>/<index>   one fixed-size block of a blob
    <root>/meta/sha256/<hex[:2]>/<hex>/<name>                   derived data, e.g. a tar index

Every file is written to a private temporary name in the same directory and renamed into place,
so a reader (in this process or another) sees a whole file or none, even if the writer is killed.
Readers take no locks.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
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


class DiskCache:
    """Blocks and sidecar files keyed by blob digest under ``root``. All methods block: call
    them from a worker thread, never from the event loop."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def block_path(self, digest: str, block_size: int, index: int) -> Path:
        algorithm, hexpart = _split(digest)
        return (
            self.root / "blocks" / algorithm / hexpart[:2] / hexpart / str(block_size) / str(index)
        )

    def meta_path(self, digest: str, name: str) -> Path:
        algorithm, hexpart = _split(digest)
        return self.root / "meta" / algorithm / hexpart[:2] / hexpart / name

    def read_block(
        self, digest: str, block_size: int, index: int, expected_size: int
    ) -> bytes | None:
        """The block's bytes, or None when absent or not the size it must be."""
        data = _read(self.block_path(digest, block_size, index))
        if data is None or len(data) != expected_size:
            return None
        return data

    def write_block(self, digest: str, block_size: int, index: int, data: bytes) -> None:
        _write_atomic(self.block_path(digest, block_size, index), data)

    def remove_blocks(self, digest: str) -> None:
        """Forget every cached block of ``digest`` (bytes found to be wrong)."""
        shutil.rmtree(self.block_path(digest, 1, 0).parent.parent, ignore_errors=True)

    def read_meta(self, digest: str, name: str) -> bytes | None:
        return _read(self.meta_path(digest, name))

    def write_meta(self, digest: str, name: str, data: bytes) -> None:
        _write_atomic(self.meta_path(digest, name), data)


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
