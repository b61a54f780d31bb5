"""Archive indexes: where each file of a layer lives inside the layer's (uncompressed) bytes."""

from modelkitfs.archive.index import Entry, EntryKind, LayerIndex
from modelkitfs.archive.layer import LayerArchive, RawFile, open_layer

__all__ = ["Entry", "EntryKind", "LayerArchive", "LayerIndex", "RawFile", "open_layer"]
