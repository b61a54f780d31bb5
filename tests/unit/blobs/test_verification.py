"""Verification over a cache that cannot keep everything: read-only, out of space, smaller
than a blob, or with blocks evicted since a blob verified (issue 18, cases 9, 10 and 12); and
the verification state machine: a blob verified once all its blocks are cached, a corrupt one
evicted and refused until a download verifies, per-block hashes checking blocks fetched
again."""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from modelkitfs.blobs import NO_READAHEAD, BlobStore
from modelkitfs.cache import CacheBudget, DiskCache, MemoryCache
from modelkitfs.errors import DigestMismatch, ModelKitFSError
from tests.support.tmpfs import small_fs
from tests.unit.blobs.stores import BLOCK, OneBlob, opened


def store_for(
    registry: OneBlob, root: Path, cap: int | None = None, **options: Any
) -> AbstractAsyncContextManager[BlobStore]:
    cache = DiskCache(root)
    budget = CacheBudget(cache, cap) if cap is not None else None
    return opened(registry, cache, budget=budget, **options)


def blob(size: int = 40 * BLOCK + 3, seed: int = 5) -> OneBlob:
    return OneBlob(size, seed)


def test_reads_on_a_read_only_cache_are_right_and_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Case 9: every download used to fail on the lock file."""
    registry = blob()
    size = len(registry.data)
    with small_fs(tmp_path / "fs", "16m") as fs:

        async def main() -> None:
            async with store_for(registry, fs.path / "cache") as store:
                assert await store.read(registry.digest, size, 0, BLOCK) == registry.data[:BLOCK]
                await store.flush()
                fs.remount("ro")
                with caplog.at_level(logging.WARNING):
                    for offset in range(0, size, 3 * BLOCK):
                        got = await store.read(registry.digest, size, offset, 3 * BLOCK)
                        assert got == registry.data[offset : offset + 3 * BLOCK]
                    await store.flush()
                assert await store.read(registry.digest, size, 0, BLOCK) == registry.data[:BLOCK]

        trio.run(main)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "cannot be written" in warnings[0].getMessage()
    assert str(fs.path / "cache") in warnings[0].getMessage()
    assert "remount" in warnings[0].getMessage()


def test_verify_full_on_a_cache_smaller_than_the_blob_verifies_as_it_streams(
    tmp_path: Path,
) -> None:
    """Case 10: a blob larger than the cap could never verify; now it is hashed as it is
    downloaded, and each block read later is checked against its hash."""
    registry = blob(size=30 * BLOCK)

    async def main() -> None:
        async with store_for(registry, tmp_path, cap=8 * BLOCK, verify="full") as store:
            await store.budget.start()  # type: ignore[union-attr]
            size = len(registry.data)
            assert await store.read(registry.digest, size, 0, size) == registry.data
            assert store.verifier.is_verified(registry.digest)

    trio.run(main)


def test_prefetching_a_verified_blob_fetches_what_eviction_took(tmp_path: Path) -> None:
    """Case 12: a blob verified once stayed "verified" after its blocks were evicted, so a
    prefetch fetched nothing."""
    registry = blob()
    size = len(registry.data)

    async def prefetch(root: Path) -> int:
        async with store_for(registry, root) as store:
            before = registry.sent
            await store.blob(registry.digest, size).fetch_verified()
            await store.flush()
            store.cache.pins.close()  # type: ignore[attr-defined]
            return registry.sent - before

    assert trio.run(prefetch, tmp_path) == size
    cache = DiskCache(tmp_path)
    for index in (0, 7, 40):
        cache.block_path(registry.digest, BLOCK, index).unlink()
    assert trio.run(prefetch, tmp_path) == 2 * BLOCK + 3  # the three blocks, no more
    assert cache.cached_blocks(registry.digest, BLOCK, 0, 40) == set(range(41))


def test_a_prefetch_the_cache_cannot_keep_says_so(tmp_path: Path) -> None:
    registry = blob()
    with small_fs(tmp_path / "fs", "16m") as fs:
        fs.remount("ro")

        async def main() -> None:
            async with store_for(registry, fs.path / "cache") as store:
                with pytest.raises(ModelKitFSError, match=r"could not keep all of blob .* remount"):
                    await store.blob(registry.digest, len(registry.data)).fetch_verified()

        trio.run(main)


def test_a_blob_with_wrong_bytes_is_evicted_and_refused_until_a_download_verifies() -> None:
    source = OneBlob(size=6 * BLOCK)
    good, digest, size = source.data, source.digest, source.size
    source.blobs[digest] = good[:100] + bytes([good[100] ^ 1]) + good[101:]  # a proxy's glitch
    told: list[str] = []

    async def on_corrupt(blob: str) -> None:
        told.append(blob)

    async def main() -> None:
        cache = MemoryCache()
        async with opened(source, cache, memory_bytes=64 * BLOCK, on_corrupt=on_corrupt) as store:
            await store.read(digest, size, 0, size)
            await store.flush()  # joins the verification that the last block started
            assert told == [digest] and store.stats.corrupt_blobs == 1
            assert not cache.cached_blocks(digest, BLOCK, 0, 5)  # evicted
            with pytest.raises(DigestMismatch, match="failed verification"):
                await store.read(digest, size, 0, 10)  # downloaded again: still wrong
            source.blobs[digest] = good
            assert await store.read(digest, size, 0, size) == good
            assert store.verifier.is_verified(digest)
        async with opened(source, cache) as again:  # its record: known to any later store
            assert await again.verifier.known_states(digest) is not None

    trio.run(main)


def test_waiting_for_a_verification_that_did_not_fetch_runs_one_that_does() -> None:
    source = OneBlob(size=4 * BLOCK)

    async def main() -> None:
        async with opened(source, MemoryCache(), memory_bytes=64 * BLOCK) as store:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(store.verifier.verified, source.digest, source.size, fetch=False)
                )
                nursery.start_soon(store.verifier.verified, source.digest, source.size)
            assert store.verifier.is_verified(source.digest)

    trio.run(main)


class CountingCache(DiskCache):
    """A disk cache that counts the blocks read from it (not those looked for and absent)."""

    reads = 0

    def read_block(self, *args: Any, **kwargs: Any) -> Any:
        found = super().read_block(*args, **kwargs)
        self.reads += found is not None
        return found


@pytest.mark.parametrize("in_order", [True, False])
def test_a_blob_read_in_order_is_hashed_as_it_comes_in(tmp_path: Path, in_order: bool) -> None:
    """Read in order, a blob is verified from the blocks in memory: not one block is read
    back from disk. Read backwards, it is verified once complete, from disk where its blocks
    have left memory. (Each read waits for the writes and hashes it started: a hash that falls
    far behind its reader reads back from disk what memory dropped, by design.)"""
    registry = blob()
    size = len(registry.data)
    cache = CountingCache(tmp_path)

    async def main() -> None:
        async with opened(registry, cache, memory_bytes=8 * BLOCK) as store:
            offsets = list(range(0, size, 3 * BLOCK))
            for offset in offsets if in_order else reversed(offsets):
                got = await store.read(registry.digest, size, offset, 3 * BLOCK, NO_READAHEAD)
                assert got == registry.data[offset : offset + 3 * BLOCK]
                await store.flush()
            assert store.verifier.is_verified(registry.digest)

    trio.run(main)
    assert (cache.reads == 0) == in_order, cache.reads


def test_blocks_held_for_the_in_order_hash_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that skips the start of a blob leaves the hash waiting: what it holds for it
    stays bounded, and the blob still verifies once its start is read."""
    monkeypatch.setattr("modelkitfs.blobs.verification.AHEAD", 4)
    registry = blob()
    size = len(registry.data)

    async def main() -> None:
        async with opened(registry, DiskCache(tmp_path), memory_bytes=64 * BLOCK) as store:
            got = await store.read(registry.digest, size, BLOCK, size - BLOCK, NO_READAHEAD)
            assert got == registry.data[BLOCK:]
            await store.flush()
            assert store.verifier._held() == 3  # blocks 1 to 3: near block 0, which it awaits
            assert not store.verifier.is_verified(registry.digest)
            assert await store.read(registry.digest, size, 0, BLOCK) == registry.data[:BLOCK]
            await store.flush()
            assert store.verifier.is_verified(registry.digest)
            assert store.verifier._held() == 0
        # A new store (a new mount) reads the blob from disk: its record says it is verified,
        # so nothing is hashed, and no block is held for a hash.
        async with opened(registry, DiskCache(tmp_path), memory_bytes=64 * BLOCK) as again:
            sent = registry.sent
            assert await again.read(registry.digest, size, 0, size) == registry.data
            await again.flush()
            assert registry.sent == sent
            assert again.verifier.is_verified(registry.digest)
            assert again.verifier._held() == 0

    trio.run(main)
