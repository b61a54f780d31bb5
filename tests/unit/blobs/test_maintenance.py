"""What ``cache info|ls|verify`` report stays true after eviction (issue case 12)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from modelkitfs.blobs.maintenance import cached_blobs, verify_blob
from modelkitfs.blobs.sha256chain import BlobChain
from modelkitfs.blobs.verified import VERIFIED_RECORD
from modelkitfs.blobs.verified import record as verified_record
from modelkitfs.cache import DiskCache

BLOCK = 1024


def put_blob(cache: DiskCache, data: bytes, *, record: bool = True) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blocks = [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]
    for index, block in enumerate(blocks):
        cache.write_block(digest, BLOCK, index, block)
    if record:
        chain = BlobChain(len(blocks))
        chain.feed(blocks)
        cache.write_meta(digest, VERIFIED_RECORD, verified_record(len(data), BLOCK, chain))
    return digest


def test_a_verified_blob_that_lost_a_block_is_no_longer_verified(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    digests = [put_blob(cache, bytes([n]) * (4 * BLOCK + 7)) for n in range(5)]
    unrecorded = put_blob(cache, b"z" * (2 * BLOCK + 1), record=False)
    (cache.block_path(digests[0], BLOCK, 2)).unlink()  # evicted from the middle
    for index in range(5):
        cache.block_path(digests[1], BLOCK, index).unlink(missing_ok=True)
    (cache.block_path(digests[2], BLOCK, 4)).unlink()  # the short last block
    states = {b.entry.digest: b.state for b in cached_blobs(cache, BLOCK)}
    assert states == {
        digests[0]: "partial",
        digests[2]: "partial",
        digests[3]: "verified",
        digests[4]: "verified",
        unrecorded: "complete",
    }  # one state each: the counts add up to the blobs
    lost = next(b for b in cached_blobs(cache, BLOCK) if b.entry.digest == digests[0])
    assert not lost.complete and not lost.verified
    assert verify_blob(cache, lost, BLOCK) == "partial"
