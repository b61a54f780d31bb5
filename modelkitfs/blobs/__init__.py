"""Blob access: byte ranges of layer blobs through a shared, digest-keyed block cache."""

from modelkitfs.blobs.blob import Blob, DerivedBlob
from modelkitfs.blobs.block_cache import BlockCache
from modelkitfs.blobs.cache import DiskCache
from modelkitfs.blobs.memory import MemoryCache
from modelkitfs.blobs.store import BlobStore

__all__ = ["Blob", "BlobStore", "BlockCache", "DerivedBlob", "DiskCache", "MemoryCache"]
