"""The index of one layer, and its life in the shared cache.

An index lists every entry of a layer with the offset of its data inside the (uncompressed)
layer, so a file read becomes a read of the blob at a known offset. It is built once per layer
digest on the machine and saved beside the blob's blocks, so later mounts list at once.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import json
import logging
import posixpath
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from modelkitfs.errors import ArchiveError

log = logging.getLogger(__name__)

INDEX_NAME = "tar-index.v1.json"


class EntryKind(str, enum.Enum):
    FILE = "file"
    DIRECTORY = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


_KINDS = {kind.value: kind for kind in EntryKind}


@dataclass(frozen=True, slots=True)
class Entry:
    """One archive member. ``path`` is normalised: relative, ``/``-separated, no ``.``/``..``."""

    path: str
    kind: EntryKind
    mode: int
    size: int = 0
    offset: int = 0
    linkname: str = ""


@dataclass
class LayerIndex:
    entries: list[Entry]

    def to_json(self) -> bytes:
        rows = [[e.path, e.kind.value, e.mode, e.size, e.offset, e.linkname] for e in self.entries]
        return json.dumps({"version": 1, "entries": rows}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LayerIndex:
        """Read a saved index back; ValueError for anything but one :meth:`to_json` wrote
        (the file is on disk: it may be damaged, and it must never name a path outside)."""
        try:
            with _collector_paused():
                document = json.loads(data)
                if not isinstance(document, dict) or document.get("version") != 1:
                    raise ValueError("unknown index version")
                entries = [
                    Entry(p, _KINDS[k], m, s, o, ln) for p, k, m, s, o, ln in document["entries"]
                ]
        except (TypeError, KeyError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed index: {exc}") from None
        for e in entries:
            if not (
                isinstance(e.path, str)
                and isinstance(e.linkname, str)
                and isinstance(e.mode, int)
                and isinstance(e.size, int)
                and isinstance(e.offset, int)
                and min(e.mode, e.size, e.offset) >= 0
                and normalize_name(e.path) == e.path
            ):
                raise ValueError(f"malformed index entry {e.path!r}")
        return cls(entries)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Tens of thousands of objects made at once, none of them garbage: at the default
    threshold the collector walked them again and again (an index of 20,000 entries loaded in
    81 ms, against 37 ms without it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def normalize_name(name: str) -> str | None:
    """The archive name as a clean relative path; ``""`` for the root, None when unsafe
    (absolute, or climbing out with ``..``)."""
    if name.startswith("/") or "\0" in name:
        return None
    if name and name[0] != "." and "//" not in name and "/." not in name:
        return name.rstrip("/")  # already clean but for a directory's trailing slash
    cleaned = posixpath.normpath(name) if name else "."
    if cleaned == ".":
        return ""
    if cleaned == ".." or cleaned.startswith("../") or cleaned.startswith("/"):
        return None
    return cleaned


class IndexSource(Protocol):
    """What an index is built from and saved beside (a blob, in practice)."""

    @property
    def digest(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def cached(self) -> bool:
        """Whether reads land in the shared block cache: fetching windows in parallel pays."""
        ...

    async def read(self, offset: int, length: int) -> bytes:
        """Bytes of a run read in order: cached, when ``cached``."""
        ...

    async def read_sparse(self, offset: int, length: int) -> bytes:
        """Bytes between ones far apart: fetched alone, not cached."""
        ...

    async def load_meta(self, name: str) -> bytes | None: ...
    async def save_meta(self, name: str, data: bytes) -> None: ...


Source = TypeVar("Source", bound=IndexSource)


async def load_or_build_index(
    source: Source, build: Callable[[Source], Awaitable[LayerIndex]]
) -> LayerIndex:
    """The cached index of ``source``, or a new one built by ``build`` and then cached."""
    cached = await source.load_meta(INDEX_NAME)
    if cached is not None:
        try:
            return LayerIndex.from_json(cached)
        except ValueError as exc:
            log.warning("ignoring unreadable cached index of %s: %s", source.digest, exc)
    try:
        index = await build(source)
    except ArchiveError as exc:
        if str(exc).startswith("layer "):
            raise
        raise ArchiveError(f"layer {source.digest}: {exc}") from exc
    await source.save_meta(INDEX_NAME, index.to_json())
    return index
