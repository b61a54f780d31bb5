"""Blob access: byte ranges of layer blobs, read through the shared block cache
(:mod:`modelkitfs.cache`) and fetched from their source where it lacks them."""

from modelkitfs.blobs.blob import Blob, BlobStore, DerivedBlob
from modelkitfs.blobs.readahead import NO_READAHEAD, READ_AHEAD, ReadHint

__all__ = ["NO_READAHEAD", "READ_AHEAD", "Blob", "BlobStore", "DerivedBlob", "ReadHint"]
