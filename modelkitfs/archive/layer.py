"""A layer as an archive: its index, and reads of its members' bytes.

A layer is a byte stream (the blob as it is, or gunzipped, or un-zstd'ed) holding either a tar
archive or, for raw layers, the bytes of exactly one file. The kit layer sees only
:class:`LayerArchive`; how a layer is encoded stays here.

A layer read file after file from every part of it (an image folder under a data loader's
shuffled workers) is a layer that will be read whole: once reads have taken ``BROAD_FILES``
files from ``BROAD_REGIONS`` of its sixteenths, it is fetched as a prefetch fetches it, in large
parallel requests, rather than block by block as each file asks. A reader of one large file,
however randomly, never gets its layer fetched whole so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from modelkitfs.archive.gzip import GzipStream
from modelkitfs.archive.index import (
    Entry,
    EntryKind,
    IndexSource,
    LayerIndex,
    load_or_build_index,
    normalize_name,
)
from modelkitfs.archive.tar import build_tar_index
from modelkitfs.archive.zstd import ZstdStream
from modelkitfs.blobs import Blob
from modelkitfs.errors import ArchiveError, ModelKitFSError

log = logging.getLogger(__name__)

RAW_FILE_MODE = 0o644
BROAD_FILES = 32  # files read from a layer...
BROAD_REGIONS = 8  # ...from this many of its sixteenths: it is fetched whole


class LayerStream(IndexSource, Protocol):
    """The uncompressed bytes of a layer (what an index is built from), with ``size`` known
    once :meth:`prepare` returns."""

    async def prepare(self) -> None: ...


class PlainStream:
    """An uncompressed layer: its bytes are the blob's."""

    def __init__(self, blob: Blob) -> None:
        self.blob = blob
        self.digest = blob.digest
        self.size = blob.size
        self.cached = blob.cached
        self.read_sparse = blob.read_sparse
        self.load_meta = blob.load_meta
        self.save_meta = blob.save_meta

    async def prepare(self) -> None:
        pass

    async def read(self, offset: int, length: int) -> bytes:
        """Through the cache, with no readahead: the tar index walk fetches its own windows in
        parallel, and its reads must not pass for a reader going through a file."""
        return await self.blob.read(offset, length, ahead=False)


@dataclass(frozen=True)
class RawFile:
    """What a raw layer's annotations say of its one file: path, mode and (if given) size."""

    path: str
    mode: int = RAW_FILE_MODE
    size: int | None = None


class LayerArchive:
    def __init__(self, blob: Blob, stream: LayerStream, raw: RawFile | None = None) -> None:
        self.blob = blob
        self.stream = stream
        self.raw = raw
        self._files: set[int] | None = set()  # where files read end; None once fetched whole
        self._regions: set[int] = set()  # sixteenths of the layer they were read from

    @property
    def digest(self) -> str:
        return self.blob.digest

    @property
    def size(self) -> int:
        """Bytes in the registry (compressed, for a compressed layer)."""
        return self.blob.size

    async def index(self) -> LayerIndex:
        if self.raw is not None:
            return await self._raw_index(self.raw)
        return await load_or_build_index(self.stream, _build_tar_index)

    async def read(
        self,
        offset: int,
        length: int,
        end: int | None = None,
        unit_end: int | None = None,
        *,
        readahead: bool = True,
    ) -> bytes:
        """``length`` bytes of the uncompressed layer at ``offset``. The readahead of an
        uncompressed layer, for a reader going in order (none unless ``readahead``), stops at
        ``end``, where the file being read ends; ``unit_end`` is where a unit the reader takes
        whole ends (a tensor): the rest of it is fetched at once."""
        if isinstance(self.stream, PlainStream):
            self._note(offset, end)
            return await self.blob.read(
                offset, length, ahead=readahead, ahead_limit=end, unit_end=unit_end
            )
        return await self.stream.read(offset, length)

    def _note(self, offset: int, end: int | None) -> None:
        """A read of the file ending at ``end``: fetch the layer whole once it is read broadly
        (see the module's docstring)."""
        if self._files is None or end is None or end in self._files or not self.blob.cached:
            return
        if len(self._files) < BROAD_FILES:  # enough counted: a million-file layer costs no more
            self._files.add(end)
        self._regions.add(offset * 16 // max(self.blob.size, 1))
        if len(self._files) >= BROAD_FILES and len(self._regions) >= BROAD_REGIONS:
            self._files = None
            self.blob.in_background(self._fetch_whole)

    async def _fetch_whole(self) -> None:
        try:
            await self.blob.fetch_verified()
        except ModelKitFSError as exc:  # the cache cannot keep it: block by block, as before
            log.info("layer %s is read broadly but cannot be fetched whole: %s", self.digest, exc)

    def read_now(
        self, offset: int, length: int, end: int, unit_end: int | None = None
    ) -> bytes | None:
        """What :meth:`read` answers, if it can be had without waiting (an uncompressed
        layer's bytes in memory or the page cache); else None."""
        if not isinstance(self.stream, PlainStream):
            return None
        self._note(offset, end)
        return self.blob.read_now(offset, length, ahead_limit=end, unit_end=unit_end)

    def block_around(self, offset: int) -> tuple[int, int] | None:
        """Where the cache block holding uncompressed byte ``offset`` starts and ends; None for
        a compressed layer, whose bytes are cached otherwise."""
        if not isinstance(self.stream, PlainStream):
            return None
        size = self.blob.block_size
        start = offset // size * size
        return start, min(start + size, self.blob.size)

    async def read_held(self, offset: int, length: int) -> bytes | None:
        """What :meth:`read` answers if nothing needs fetching (the blob's ``read_held``);
        None for a compressed layer."""
        if not isinstance(self.stream, PlainStream):
            return None
        return await self.blob.read_held(offset, length)

    async def cached_bytes(self, offset: int, length: int) -> int | None:
        """How many of ``length`` uncompressed bytes at ``offset`` are cached; None for a
        compressed layer, whose bytes are not cached one file at a time."""
        if not isinstance(self.stream, PlainStream):
            return None
        return await self.blob.cached_bytes(offset, offset + length)

    async def prefetch(self) -> None:
        """Bring all of the layer into the cache: its index, the blob itself (verified), and
        what is derived from it (a gzip checkpoint index, a decompressed zstd layer)."""
        await self.index()
        await self.stream.prepare()
        if not isinstance(self.stream, ZstdStream):  # it keeps the decompressed bytes instead
            await self.blob.fetch_verified()

    async def aclose(self) -> None:
        if isinstance(self.stream, GzipStream):
            await self.stream.aclose()

    async def _raw_index(self, raw: RawFile) -> LayerIndex:
        path = normalize_name(raw.path)
        if not path:
            raise ArchiveError(
                f"raw layer {self.digest} names an unsafe or empty file path {raw.path!r}"
            )
        size = raw.size
        if size is None or isinstance(self.stream, PlainStream):
            await self.stream.prepare()
            size = self.stream.size
        return LayerIndex([Entry(path, EntryKind.FILE, raw.mode, size, 0)])


async def _build_tar_index(stream: LayerStream) -> LayerIndex:
    await stream.prepare()
    return await build_tar_index(stream)


def open_layer(
    blob: Blob, compression: str, *, diff_id: str | None = None, raw: RawFile | None = None
) -> LayerArchive:
    """The archive in ``blob``: a tar archive, or the one file ``raw`` describes."""
    stream: LayerStream
    if not compression:
        stream = PlainStream(blob)
    elif compression == "gzip":
        stream = GzipStream(blob)
    elif compression == "zstd":
        stream = ZstdStream(blob, diff_id)
    else:
        raise ArchiveError(
            f"layer {blob.digest} is compressed with {compression!r}, which kit does not write; "
            "modelkitfs reads uncompressed, gzip and zstd layers"
        )
    return LayerArchive(blob, stream, raw)
