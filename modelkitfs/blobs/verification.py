"""What "verified" and "cached" promise, kept true when the cache cannot hold a whole blob.

A blob's record of per-block hashes (``verified.v1.json``) outlives its blocks: evicting a
block must not make the record lie, so nothing here takes the record for the blocks. It only
says how to check a block downloaded again. Hence:

- :func:`complete_blob` (``prefetch``, ``--prefetch``): every block on disk when it returns,
  fetching what eviction took (each block checked against its hash), or an error saying why
  the cache cannot keep them all;
- :func:`hash_streaming` (``--verify full`` on a cache that cannot keep the blob: smaller than
  it, read-only, full): the blob hashed as it is downloaded, block by block, without keeping
  it; reads then download each block again and check it against its hash.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import trio

from modelkitfs.errors import ModelKitFSError

if TYPE_CHECKING:
    from modelkitfs.blobs.store import BlobStore

RUN = 16  # blocks fetched or hashed together


async def missing_blocks(store: BlobStore, digest: str, size: int) -> list[int]:
    """Blocks of the blob that are not in the disk cache now."""
    count = store._block_count(size)
    present = await trio.to_thread.run_sync(
        store.cache.cached_blocks, digest, store.block_size, 0, count - 1
    )
    return [index for index in range(count) if index not in present]


async def complete_blob(store: BlobStore, digest: str, size: int) -> None:
    """Make sure every block of the blob (verified: its hashes are known) is in the disk
    cache, downloading what is missing; raise when the cache cannot keep them all."""
    missing = await missing_blocks(store, digest, size)
    if not missing:
        return
    for index in missing:  # held in memory only: fetch it (or take it from disk) to write
        store._memory.pop((digest, index))

    async def fetch(run: list[int]) -> None:
        for index in run:
            await store._block(digest, size, index, run[-1])

    async with trio.open_nursery() as nursery:
        for start in range(0, len(missing), RUN):
            nursery.start_soon(fetch, missing[start : start + RUN])
    await store._written()
    if await missing_blocks(store, digest, size):
        raise cannot_keep(store, digest, size)


def cannot_keep(store: BlobStore, digest: str, size: int) -> ModelKitFSError:
    """The error of a blob the cache cannot hold whole: why, and what to do."""
    root = store.cache.name
    if (unwritable := store.cache.cannot_write()) is not None:
        why = unwritable
    else:
        cap = store.budget.max_bytes if store.budget is not None else None
        shown = f"{cap / 2**20:.0f} MiB" if cap else "its size"
        why = (
            f"its size cap ({shown}, the cache's own, shared by every mount on it) leaves too "
            "little room beside the blocks in use; raise it with --cache-max-size, select less "
            "with --filter, or choose a larger cache with --cache-dir"
        )
    return ModelKitFSError(
        f"cache {root} could not keep all of blob {digest} ({size} bytes): {why}"
    )


def _hash_run(blocks: list[bytes | bytearray | memoryview], whole: hashlib._Hash) -> list[str]:
    per_block = []
    for block in blocks:
        whole.update(block)
        per_block.append(hashlib.sha256(block).hexdigest())
    return per_block


async def hash_streaming(store: BlobStore, digest: str, size: int) -> tuple[str, list[str]]:
    """The blob's digest and per-block sha256, from the blocks on disk and the rest
    downloaded ``RUN`` blocks at a time and dropped once hashed."""
    whole = hashlib.sha256()
    per_block: list[str] = []
    count = store._block_count(size)
    for first in range(0, count, RUN):
        last = min(first + RUN, count) - 1
        found, _ = await trio.to_thread.run_sync(
            store._read_cached, digest, size, list(range(first, last + 1))
        )
        blocks = []
        index = first
        while index <= last:
            if index in found:
                blocks.append(found[index])
                index += 1
                continue
            stop = index
            while stop + 1 <= last and stop + 1 not in found:
                stop += 1
            downloaded = await store._download(digest, size, index, stop)
            store.stats.downloaded_blocks += len(downloaded)
            blocks.extend(downloaded)
            index = stop + 1
        per_block += await trio.to_thread.run_sync(_hash_run, blocks, whole)
    return f"sha256:{whole.hexdigest()}", per_block
