"""Blob access: byte ranges of layer blobs, read through the shared block cache
(:mod:`modelkitfs.cache`) and fetched from their source where it lacks them."""

from modelkitfs.blobs.blob import Blob, BlobStore, DerivedBlob

__all__ = ["Blob", "BlobStore", "DerivedBlob"]
