"""Archive indexes: where each file of a layer lives inside the layer's (uncompressed) bytes."""

from modelkitfs.archive.index import Entry, EntryKind, LayerIndex
from modelkitfs.archive.layer import LayerArchive, RawFile, open_layer
from modelkitfs.blobs import NO_READAHEAD, ReadHint

__all__ = [
    "NO_READAHEAD",
    "Entry",
    "EntryKind",
    "LayerArchive",
    "LayerIndex",
    "RawFile",
    "ReadHint",
    "open_layer",
]
