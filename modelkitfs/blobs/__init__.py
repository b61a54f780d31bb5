"""Blob access: byte ranges of layer blobs, read through the shared block cache
(:mod:`modelkitfs.cache`) and fetched from their source where it lacks them."""

from modelkitfs.blobs.blob import Blob, DerivedBlob
from modelkitfs.blobs.store import BlobStore

__all__ = ["Blob", "BlobStore", "DerivedBlob"]
