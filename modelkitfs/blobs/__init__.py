"""Blob access: byte ranges of layer blobs through a shared, digest-keyed block cache."""

from modelkitfs.blobs.cache import DiskCache
from modelkitfs.blobs.store import Blob, BlobStore

__all__ = ["Blob", "BlobStore", "DiskCache"]
