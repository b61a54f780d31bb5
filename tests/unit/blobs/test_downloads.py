"""Downloads: one request per run of adjacent blocks, claims that make another process's
download be waited for, and one stream per blob from a server that ignores Range."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from modelkitfs.blobs import NO_READAHEAD
from modelkitfs.blobs.downloads import MAX_BLOCKS_PER_REQUEST
from modelkitfs.cache import MemoryCache
from modelkitfs.errors import RegistryError
from modelkitfs.registry.source import Deliver, ForwardingSource
from modelkitfs.registry.testing import FailingSource, flip
from tests.support.waiting import until
from tests.unit.blobs.stores import BLOCK, OneBlob, opened


def test_adjacent_missing_blocks_go_out_as_one_request_per_run() -> None:
    source = OneBlob(size=40 * BLOCK)

    async def main() -> None:
        async with opened(source, MemoryCache(), memory_bytes=64 * BLOCK) as store:
            got = await store.read(source.digest, source.size, 0, 40 * BLOCK, NO_READAHEAD)
            assert got == source.data
        runs = [(start, end) for _, start, end in source.requests]
        assert runs[0] == (0, MAX_BLOCKS_PER_REQUEST * BLOCK)
        assert len(runs) == -(-40 // MAX_BLOCKS_PER_REQUEST)
        assert source.sent == source.size

    trio.run(main)


def test_a_block_another_process_downloads_is_waited_for_not_downloaded() -> None:
    source = OneBlob(size=4 * BLOCK)
    cache = MemoryCache()
    other = cache.claim_run(source.digest, BLOCK, 0, 0)  # "another process" has block 0
    assert other is not None and other.held == {0}

    async def main() -> None:
        async with opened(source, cache) as store:
            async with trio.open_nursery() as nursery:
                got: list[bytes] = []

                async def reader() -> None:
                    got.append(await store.read(source.digest, source.size, 0, 10, NO_READAHEAD))

                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                await trio.sleep(1)  # the reader polls the claim meanwhile
                assert not got and source.sent == 0
                cache.write_block(source.digest, BLOCK, 0, source.data[:BLOCK])
                other.release(0)
            assert got == [source.data[:10]]
            assert source.sent == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class Polled(MemoryCache):
    """A memory cache that fails a reader polling a claim for ever (as one did before)."""

    claims = 0

    def claim_run(self, *args: Any) -> Any:
        self.claims += 1
        assert self.claims < 1000, "a reader polls a claim for ever"
        return super().claim_run(*args)


def test_a_claim_held_longer_than_a_read_can_wait_is_overtaken() -> None:
    """Issue 29, case 5: a process stopped (Ctrl-Z) while it downloads holds its claims for
    ever; a reader waits for them half its timeout, then downloads the blocks itself, and the
    blob's other blocks claimed by that process without waiting again."""
    source = OneBlob(size=8 * BLOCK)
    cache = Polled()
    stopped = cache.claim_run(source.digest, BLOCK, 0, 5)  # never released
    assert stopped is not None and stopped.held == set(range(6))

    async def main() -> None:
        async with opened(source, cache, timeout=10) as store:
            start = trio.current_time()
            got = await store.read(source.digest, source.size, 0, 2 * BLOCK, NO_READAHEAD)
            assert got == source.data[: 2 * BLOCK]
            waited = trio.current_time() - start
            assert 5 <= waited < 10  # half the timeout, and the read was served within it
            later = await store.read(source.digest, source.size, 4 * BLOCK, BLOCK, NO_READAHEAD)
            assert later == source.data[4 * BLOCK : 5 * BLOCK]
            assert trio.current_time() - start == waited  # no second wait
            await store.flush()
            assert cache.cached_blocks(source.digest, BLOCK, 0, 7) == {0, 1, 4}
            assert source.sent == 3 * BLOCK  # each block downloaded once here
        assert stopped.held == set(range(6))  # the stopped process's claims are its own

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_once_no_claim_is_held_too_long_claims_are_waited_for_again() -> None:
    """Overtaking lasts while the blob's claims held too long do: a claim found fresh
    afterwards is waited for, and its block read from the cache, not downloaded."""
    source = OneBlob(size=8 * BLOCK)
    cache = MemoryCache()
    stopped = cache.claim_run(source.digest, BLOCK, 0, 0)
    assert stopped is not None

    async def main() -> None:
        async with opened(source, cache, timeout=10) as store:
            assert await store.read(source.digest, source.size, 0, 10, NO_READAHEAD)
            stopped.release(0)  # the stopped process was killed
            assert await store.read(source.digest, source.size, BLOCK, 10, NO_READAHEAD)
            other = cache.claim_run(source.digest, BLOCK, 2, 2)  # a healthy download
            assert other is not None and other.held == {2}
            async with trio.open_nursery() as nursery:
                got: list[bytes] = []

                async def reader() -> None:
                    got.append(
                        await store.read(source.digest, source.size, 2 * BLOCK, 10, NO_READAHEAD)
                    )

                nursery.start_soon(reader, name="reader")
                await trio.sleep(1)
                assert not got  # waited for, not overtaken at once
                cache.write_block(source.digest, BLOCK, 2, source.data[2 * BLOCK : 3 * BLOCK])
                other.release(2)
            assert got == [source.data[2 * BLOCK : 2 * BLOCK + 10]]
            assert source.sent == 2 * BLOCK  # blocks 0 and 1 only

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_server_that_ignores_range_sends_the_blob_once_however_it_is_read() -> None:
    """Issue 18, case 7: each range used to cost the blob from its start."""
    source = OneBlob(size=100 * BLOCK + 17, ignoring=True)
    order = np.random.default_rng(1).permutation(100)

    async def main() -> None:
        async with opened(source, MemoryCache(), memory_bytes=128 * BLOCK) as store:
            for index in order[:20]:
                offset = int(index) * BLOCK + 5
                got = await store.read(source.digest, source.size, offset, BLOCK)
                assert got == source.data[offset : offset + BLOCK]
            assert await store.read(source.digest, source.size, 0, source.size) == source.data
        assert source.sent == source.size

    trio.run(main)


def test_a_sparse_read_from_such_a_server_goes_through_the_one_stream() -> None:
    source = OneBlob(size=64 * BLOCK, ignoring=True)

    async def main() -> None:
        async with opened(source, MemoryCache(), memory_bytes=128 * BLOCK) as store:
            blob = store.blob(source.digest, source.size)
            assert await blob.read_sparse(0, 512) == source.data[:512]
            tail = source.size - 1024
            assert await blob.read_sparse(tail, 1024) == source.data[tail:]
            assert await blob.read(0, source.size) == source.data
        assert source.sent == source.size + 512  # the first header, then the blob once

    trio.run(main)


class Held(ForwardingSource):
    """Delivers a range's first piece, then holds the rest until ``release`` is set (a
    long request on its way)."""

    def __init__(self, inner: OneBlob) -> None:
        super().__init__(inner)
        self.release = trio.Event()
        self.finished = False

    async def deliver_range(
        self, repository: str, digest: str, start: int, end: int, piece: int, deliver: Deliver
    ) -> None:
        pieces: list[memoryview] = []
        await self.inner.deliver_range(repository, digest, start, end, piece, pieces.append)
        deliver(pieces[0])
        await self.release.wait()
        for buffer in pieces[1:]:
            deliver(buffer)
        self.finished = True


def test_a_block_lands_as_it_arrives_not_when_its_request_ends() -> None:
    """A long request's first block reaches a reader, memory and the disk while the rest is
    on its way: the request's size does not set how long a reader waits or what is held."""
    inner = OneBlob(size=8 * BLOCK)
    source = Held(inner)
    cache = MemoryCache()

    async def main() -> None:
        async with opened(source, cache, memory_bytes=64 * BLOCK) as store:
            async with trio.open_nursery() as nursery:
                whole: list[bytes] = []

                async def read_all() -> None:
                    whole.append(await store.read(inner.digest, inner.size, 0, inner.size))

                nursery.start_soon(read_all)
                await until(lambda: inner.requests, "the reader's request")
                assert inner.requests == [(inner.digest, 0, 8 * BLOCK)]  # one request
                first = await store.read(inner.digest, inner.size, 0, BLOCK, NO_READAHEAD)
                assert first == inner.data[:BLOCK] and not source.finished
                await until(lambda: cache.cached_blocks(inner.digest, BLOCK, 0, 7), "block 0")
                assert cache.cached_blocks(inner.digest, BLOCK, 0, 7) == {0}
                source.release.set()
            assert whole == [inner.data] and len(inner.requests) == 1

    trio.run(main)


def test_a_wrong_block_in_a_run_is_asked_for_again_from_there() -> None:
    """The blocks before it landed; the retry asks for it and those after it only."""
    inner = OneBlob(size=4 * BLOCK)
    source = FailingSource(inner, {})
    cache = MemoryCache()

    async def main() -> None:
        async with opened(source, cache, memory_bytes=64 * BLOCK) as store:
            await store.blob(inner.digest, inner.size).fetch_verified()
            cache.remove_blocks(inner.digest)
            store.memory.forget(inner.digest)
            del inner.requests[:]
            source.faults[source.count + 1] = flip(2 * BLOCK + 7)
            got = await store.read(inner.digest, inner.size, 0, inner.size, NO_READAHEAD)
            assert got == inner.data
        assert inner.requests == [
            (inner.digest, 0, 4 * BLOCK),
            (inner.digest, 2 * BLOCK, 4 * BLOCK),
        ]

    trio.run(main)


def test_a_piece_cut_short_in_the_middle_stops_the_run_and_nothing_after_it_lands() -> None:
    """The pieces after a short one would land one block early: wrong bytes."""
    inner = OneBlob(size=4 * BLOCK)
    source = FailingSource(inner, {1: lambda pieces: [pieces[0], pieces[1][:-5], *pieces[2:]]})
    cache = MemoryCache()

    async def main() -> None:
        async with opened(source, cache, memory_bytes=64 * BLOCK) as store:
            with pytest.raises(RegistryError, match=r"answered \d+ bytes for \d+ of blob"):
                await store.read(inner.digest, inner.size, 0, inner.size, NO_READAHEAD)
            await store.writes.join()
            assert cache.cached_blocks(inner.digest, BLOCK, 0, 3) == {0}
            got = await store.read(inner.digest, inner.size, 0, inner.size, NO_READAHEAD)
            assert got == inner.data

    trio.run(main)
