"""What ``modelkitfs cache ...`` shows and does: the cache as a whole, between mounts.

Runs without an event loop (the command is short-lived). Safe while mounts run: evicting or
clearing only makes their next read download again.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass

from modelkitfs.blobs.blob import DERIVED_RECORD
from modelkitfs.blobs.sha256chain import BlobChain
from modelkitfs.blobs.store import DEFAULT_BLOCK_SIZE
from modelkitfs.blobs.verified import VERIFIED_RECORD, record
from modelkitfs.cache import BlobEntry, DiskCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedBlob:
    """One blob of the cache as its blocks on disk show it now. A record of a verification
    outlives evicted blocks (its chaining states check blocks downloaded again), so it alone never
    makes a blob "verified": that takes the record and every block present."""

    entry: BlobEntry
    size: int | None  # known when verified, derived, or its last block is in
    recorded: bool  # a verification (or a finished derivation) was recorded for it
    block_size: int = DEFAULT_BLOCK_SIZE

    @property
    def present(self) -> frozenset[int]:
        return self.entry.indexes.get(self.block_size, frozenset())

    @property
    def complete(self) -> bool:
        """Every block of the blob is on disk."""
        if self.size is None:
            return False
        count = max(1, -(-self.size // self.block_size))
        return len(self.present) >= count and all(i in self.present for i in range(count))

    @property
    def verified(self) -> bool:
        return self.recorded and self.complete

    @property
    def state(self) -> str:
        """Exactly one of ``verified``, ``complete`` and ``partial``: counts add up."""
        return "verified" if self.verified else ("complete" if self.complete else "partial")


def cached_blobs(cache: DiskCache, block_size: int = DEFAULT_BLOCK_SIZE) -> list[CachedBlob]:
    """Every blob in the cache, most recently used first, with what is known of it."""
    rows = []
    for entry in cache.blobs():
        record = _record(cache, entry.digest, VERIFIED_RECORD)
        derived = _record(cache, entry.digest, DERIVED_RECORD)
        size = (record or derived or {}).get("size")
        if size is None:
            size = _size_from_blocks(cache, entry, block_size)
        recorded = record is not None or derived is not None
        rows.append(CachedBlob(entry, size, recorded, block_size))
    return rows


def _record(cache: DiskCache, digest: str, name: str) -> dict[str, int] | None:
    raw = cache.read_meta(digest, name)
    try:
        document = json.loads(raw) if raw else None
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _size_from_blocks(cache: DiskCache, entry: BlobEntry, block_size: int) -> int | None:
    """A blob whose blocks 0..n are all there and whose last one is short is complete."""
    indices = sorted(entry.indexes.get(block_size, ()))
    if not indices or indices != list(range(len(indices))):
        return None
    last = cache.read_block_size(entry.digest, block_size, len(indices) - 1)
    if last is None or last >= block_size:
        return None
    return (len(indices) - 1) * block_size + last


def verify_blob(cache: DiskCache, blob: CachedBlob, block_size: int = DEFAULT_BLOCK_SIZE) -> str:
    """``verified``, ``partial`` or ``corrupt`` (then evicted). Blobs named by a derived key
    (bytes decompressed without a diffId) have no digest to check and count as partial."""
    digest = blob.entry.digest
    if not blob.complete or not digest.startswith("sha256:") or blob.size is None:
        return "partial"
    chain = BlobChain(max(1, -(-blob.size // block_size)))
    for index in range(chain.count):
        block = cache.read_block(
            digest, block_size, index, min(block_size, blob.size - index * block_size)
        )
        if block is None:
            return "partial"
        chain.feed([block])
    if chain.digest != digest:
        log.error("cached blob %s does not hash to its digest: evicting it", digest)
        cache.remove_blocks(digest)
        cache.remove_meta(digest, VERIFIED_RECORD)
        return "corrupt"
    with contextlib.suppress(OSError):  # a read-only cache: checked out, the cache warned
        cache.write_meta(digest, VERIFIED_RECORD, record(blob.size, block_size, chain))
    return "verified"
