"""The read path of the block store, over a memory cache and a source that fails chosen
requests: the right bytes after a retry, or a clear error, never a wrong byte; each block
fetched once however many readers want it."""

from __future__ import annotations

import logging

import pytest
import trio

from modelkitfs.blobs import NO_READAHEAD
from modelkitfs.cache import MemoryCache
from modelkitfs.errors import RegistryError, TransientError
from modelkitfs.registry.testing import FailingSource, MemorySource, flip, short
from tests.unit.blobs.stores import BLOCK, OneBlob, opened


def test_reads_anywhere_are_the_bytes_of_the_blob() -> None:
    source = OneBlob()

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            for offset, length in [(0, 10), (BLOCK - 3, 7), (5 * BLOCK, 3 * BLOCK), (0, 10**9)]:
                got = await store.read(source.digest, source.size, offset, length)
                assert got == source.data[offset : offset + length]
            assert await store.read(source.digest, source.size, source.size, 10) == b""

    trio.run(main)


def test_readers_of_the_same_blocks_at_once_share_one_download() -> None:
    source = OneBlob()

    async def main() -> None:
        async with opened(source, MemoryCache(), memory_bytes=64 * BLOCK) as store:
            got: list[bytes] = []

            async def reader() -> None:
                got.append(await store.read(source.digest, source.size, 0, 8 * BLOCK, NO_READAHEAD))

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(reader)
            assert got == [source.data[: 8 * BLOCK]] * 10
            assert source.sent == 8 * BLOCK  # once, not ten times

    trio.run(main)


def test_a_failed_request_fails_the_read_clearly_and_the_next_read_succeeds() -> None:
    inner = OneBlob()
    source = FailingSource(inner, {1: TransientError("connection reset by peer")})

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            with pytest.raises(TransientError, match="connection reset"):
                await store.read(inner.digest, inner.size, 0, BLOCK, NO_READAHEAD)
            assert await store.read(inner.digest, inner.size, 0, BLOCK) == inner.data[:BLOCK]

    trio.run(main)


def test_readers_waiting_on_a_failed_download_share_its_failure() -> None:
    inner = OneBlob()
    source = FailingSource(inner, {1: TransientError("gave up")})

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            failures: list[BaseException] = []

            async def reader() -> None:
                try:
                    await store.read(inner.digest, inner.size, 0, BLOCK, NO_READAHEAD)
                except TransientError as exc:
                    failures.append(exc)

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(reader)
            assert len(failures) == 3 and source.count == 1  # one request, one failure

    trio.run(main)


def test_an_answer_shorter_than_the_range_is_an_error_never_a_short_block() -> None:
    inner = OneBlob()
    source = FailingSource(inner, {1: short(5)})

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            with pytest.raises(RegistryError, match=r"answered \d+ bytes for \d+ of blob"):
                await store.read(inner.digest, inner.size, 0, 2 * BLOCK, NO_READAHEAD)
            again = await store.read(inner.digest, inner.size, 0, 2 * BLOCK, NO_READAHEAD)
            assert again == inner.data[: 2 * BLOCK]

    trio.run(main)


def test_wrong_bytes_of_a_verified_blob_are_fetched_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once a blob verified, each block downloaded later is checked on its own."""
    inner = OneBlob(size=4 * BLOCK)
    source = FailingSource(inner, {})
    cache = MemoryCache()

    async def main() -> None:
        async with opened(source, cache) as store:
            await store.blob(inner.digest, inner.size).fetch_verified()
            assert store.verifier.is_verified(inner.digest)
            cache.remove_blocks(inner.digest)
            store.memory.forget(inner.digest)
            source.faults[source.count + 1] = flip(10)
            with caplog.at_level(logging.WARNING):
                got = await store.read(inner.digest, inner.size, 0, BLOCK, NO_READAHEAD)
            assert got == inner.data[:BLOCK]
        assert "differ from those verified before (attempt 1 of 3)" in caplog.text

    trio.run(main)


def test_a_source_read_in_place_is_not_copied_into_the_cache() -> None:
    source = OneBlob(in_place=True)
    cache = MemoryCache()

    async def main() -> None:
        async with opened(source, cache) as store:
            got = await store.read(source.digest, source.size, BLOCK, 3 * BLOCK)
            assert got == source.data[BLOCK : 4 * BLOCK]
            assert await store.cached_bytes(source.digest, source.size) == source.size
        assert not cache.cached_blocks(source.digest, BLOCK, 0, 40)

    trio.run(main)


def test_blocks_read_are_kept_in_the_cache_and_served_from_it() -> None:
    source = OneBlob(size=6 * BLOCK)
    cache = MemoryCache()

    async def main() -> None:
        async with opened(source, cache) as store:
            assert await store.read(source.digest, source.size, 0, source.size) == source.data
            await store.flush()
            assert cache.cached_blocks(source.digest, BLOCK, 0, 5) == set(range(6))
        sent = source.sent
        async with opened(source, cache) as again:  # a new store: its memory is empty
            assert await again.read(source.digest, source.size, 0, source.size) == source.data
            assert again.stats.disk_hits == 6
        assert source.sent == sent

    trio.run(main)


def test_messages_name_the_source_and_repository() -> None:
    source = MemorySource(registry="registry.example")

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            assert store.describe() == "registry.example/repo"

    trio.run(main)


def test_a_read_at_once_answers_only_with_blocks_it_has_never_waiting() -> None:
    source = OneBlob(size=6 * BLOCK)
    digest, size, data = source.digest, source.size, source.data

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            assert store.read_now(digest, size, BLOCK, 100) is None  # nothing here yet
            assert source.sent == 0
            assert await store.read(digest, size, BLOCK + 7, 100) == data[BLOCK + 7 : BLOCK + 107]
            assert store.read_now(digest, size, BLOCK + 50, 900) == data[BLOCK + 50 : BLOCK + 950]
            assert store.read_now(digest, size, 2 * BLOCK - 10, 20) is None  # block 2 is not
            await store.flush()
            store.memory.pop((digest, 1))  # gone from memory: its checked pages are read
            assert store.read_now(digest, size, BLOCK + 9, 99) == data[BLOCK + 9 : BLOCK + 108]
            assert store.read_now(digest, size, size, 10) == b""

    trio.run(main)
