"""A layer as an archive: its index, and reads of its members' bytes.

A layer is a byte stream (the blob as it is, or gunzipped, or un-zstd'ed: a
:class:`~.stream.LayerStream` of its format) holding either a tar archive or, for raw layers,
the bytes of exactly one file. The kit layer sees only :class:`LayerArchive`; how a layer is
encoded stays behind the stream: the archive passes each question on, never asking which
format answers it.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelkitfs.archive.gzip import GzipStream
from modelkitfs.archive.index import (
    Entry,
    EntryKind,
    LayerIndex,
    load_or_build_index,
    normalize_name,
)
from modelkitfs.archive.plain import PlainStream
from modelkitfs.archive.stream import LayerStream
from modelkitfs.archive.tar import build_tar_index
from modelkitfs.archive.zstd import ZstdStream
from modelkitfs.blobs import READ_AHEAD, Blob, ReadHint
from modelkitfs.errors import ArchiveError

RAW_FILE_MODE = 0o644


@dataclass(frozen=True)
class RawFile:
    """What a raw layer's annotations say of its one file: path, mode and (if given) size."""

    path: str
    mode: int = RAW_FILE_MODE
    size: int | None = None


class LayerArchive:
    """The layer in ``blob``, read as ``stream`` (its format's); ``raw``: the one file of a
    layer that is no tar archive."""

    def __init__(self, blob: Blob, stream: LayerStream, raw: RawFile | None = None) -> None:
        self.blob, self.stream, self.raw = blob, stream, raw
        self.digest = blob.digest
        self.size = blob.size  # bytes in the registry (compressed, for a compressed layer)

    async def index(self) -> LayerIndex:
        if self.raw is not None:
            return await self._raw_index(self.raw)
        return await load_or_build_index(self.stream, _build_tar_index)

    async def read(self, offset: int, length: int, hint: ReadHint = READ_AHEAD) -> bytes:
        """``length`` bytes of the uncompressed layer at ``offset``. ``hint`` says where the
        file being read ends (readahead stops there) and where a unit the reader takes whole
        ends (a tensor: the rest of it is fetched at once); formats that have no use for it
        (a compressed layer) pass it by."""
        return await self.stream.read(offset, length, hint)

    def read_now(self, offset: int, length: int, hint: ReadHint) -> bytes | None:
        """What :meth:`read` answers, if it can be had without waiting (an uncompressed
        layer's bytes in memory or the page cache); else None."""
        return self.stream.read_now(offset, length, hint)

    def block_around(self, offset: int) -> tuple[int, int] | None:
        """Where the cache block holding uncompressed byte ``offset`` starts and ends; None for
        a compressed layer, whose bytes are cached otherwise."""
        return self.stream.block_around(offset)

    async def read_held(self, offset: int, length: int) -> bytes | None:
        """What :meth:`read` answers if nothing needs fetching (the blob's ``read_held``);
        None for a compressed layer."""
        return await self.stream.read_held(offset, length)

    async def cached_bytes(self, offset: int, length: int) -> int | None:
        """How many of ``length`` uncompressed bytes at ``offset`` are cached; None for a
        compressed layer, whose bytes are not cached one file at a time."""
        return await self.stream.cached_bytes(offset, length)

    async def cached_size(self) -> int:
        """How many of the layer's bytes as the registry holds them (``size``: compressed, for
        a compressed layer) are in the cache."""
        return await self.blob.cached_bytes()

    async def prefetch(self) -> None:
        """Bring all of the layer into the cache: its index, the blob itself (verified), and
        what is derived from it (a gzip checkpoint index, a decompressed zstd layer)."""
        await self.index()
        await self.stream.prefetch()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def _raw_index(self, raw: RawFile) -> LayerIndex:
        path = normalize_name(raw.path)
        if not path:
            raise ArchiveError(
                f"raw layer {self.digest} names an unsafe or empty file path {raw.path!r}"
            )
        size = self.stream.known_size()  # a plain layer's own, else as annotated
        if size is None:
            size = raw.size
        if size is None:
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
