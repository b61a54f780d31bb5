"""Blob access: byte ranges of layer blobs through a shared, digest-keyed block cache."""

from modelkitfs.blobs.cache import DiskCache
from modelkitfs.blobs.store import Blob, BlobStore, DerivedBlob

__all__ = ["Blob", "BlobStore", "DerivedBlob", "DiskCache"]
