"""A layer as an archive: its index, and reads of its members' bytes.

The kit layer sees only this: how a layer is encoded (plain tar now; compressed and raw layers
later) stays behind :class:`LayerArchive`.
"""

from __future__ import annotations

from modelkitfs.archive.index import LayerIndex, load_or_build_index
from modelkitfs.archive.tar import build_tar_index
from modelkitfs.blobs import Blob
from modelkitfs.errors import ArchiveError


class LayerArchive:
    """An uncompressed tar layer: members are read straight from the blob at their offset."""

    def __init__(self, blob: Blob) -> None:
        self.blob = blob

    @property
    def digest(self) -> str:
        return self.blob.digest

    @property
    def size(self) -> int:
        return self.blob.size

    async def index(self) -> LayerIndex:
        return await load_or_build_index(self.blob, build_tar_index)

    async def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the uncompressed layer at ``offset``."""
        return await self.blob.read(offset, length)


def open_layer(blob: Blob, format: str, compression: str) -> LayerArchive:
    if format != "tar" or compression:
        encoding = format + (f"+{compression}" if compression else "")
        raise ArchiveError(
            f"layer {blob.digest} is {encoding}; only uncompressed tar layers can be mounted by "
            "this version: repack the kit with 'kit pack' (no --compression) or upgrade modelkitfs"
        )
    return LayerArchive(blob)
