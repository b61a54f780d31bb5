"""Random access to layer blobs, one fixed-size block at a time: the read path.

A read is served from, in order: a small in-memory LRU of recent blocks, the block cache
(shared on disk by every process), and the blob's source. Blocks missing side by side are
fetched with one range request. Each block is fetched once, however many readers want it at
the same moment: within this process they wait on one flight (:mod:`~modelkitfs.blobs.flights`);
other processes on the same cache wait on its download claim (:mod:`~modelkitfs.blobs.downloads`).

The store's other jobs live in modules of their own: writing blocks behind the reader
(:mod:`~modelkitfs.blobs.write_behind`), verifying blobs (:mod:`~modelkitfs.blobs.verification`),
and the facades the archive layer reads through (:mod:`~modelkitfs.blobs.blob`, where
:class:`~modelkitfs.blobs.blob.BlobStore` is this store handing them out). Their
background work runs in the nursery of the session that opened the store
(:mod:`~modelkitfs.blobs.jobs`), so that the session's end joins it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from modelkitfs.blobs.blocks import Blocks, CacheStats, read_cached
from modelkitfs.blobs.downloads import MAX_BLOCKS_PER_REQUEST, Downloads
from modelkitfs.blobs.flights import Flight, Flights, for_waiters
from modelkitfs.blobs.jobs import Jobs
from modelkitfs.blobs.pages import SmallReads
from modelkitfs.blobs.readahead import READ_AHEAD, Readahead, ReadHint
from modelkitfs.blobs.verification import Verifier
from modelkitfs.blobs.verified import VerifiedStates
from modelkitfs.blobs.write_behind import WriteBehind
from modelkitfs.cache import BlockCache, BlockMemory, CacheWrites
from modelkitfs.primitives.buffers import Buffer
from modelkitfs.registry.network import DEFAULT_TIMEOUT
from modelkitfs.registry.source import BlobSource

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 1024 * 1024
MEMORY_CACHE_BYTES = 64 * 1024 * 1024
LOAD_RUN = 4  # blocks read from the disk cache in one worker-thread call, fetching ahead
# A read of at most a block over this is small: it may read a checked block's pages alone.
SMALL_READ = 4


class BlockStore:
    """Serves byte ranges of the blobs of one repository of ``source``, through ``cache``;
    its background work runs in ``nursery``."""

    def __init__(
        self,
        source: BlobSource,
        repository: str,
        cache: BlockCache,
        nursery: trio.Nursery,
        *,
        budget: CacheWrites | None = None,
        verify: str = "complete",
        on_corrupt: Callable[[str], Awaitable[None]] | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        memory_bytes: int = MEMORY_CACHE_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.source = source
        self.timeout = timeout  # seconds a read may take (--timeout)
        self.repository = repository
        self.cache = cache
        self.budget = budget  # the cache's cap, when the cache has one
        writes = budget if budget is not None else CacheWrites(cache)
        self.block_size = block_size
        self.blocks = blocks = Blocks(block_size)
        self.stats = stats = CacheStats()
        # Blocks in memory are in use: pinned in the shared cache, so no process evicts them.
        self.memory = BlockMemory(memory_bytes, self._pin, self._unpin)
        self.flights = Flights()
        self.background = Jobs(nursery, "fetching blocks ahead of a reader")
        jobs = Jobs(nursery, "writing a block to the cache")
        self.writes = WriteBehind(
            writes, self.memory, jobs, self._written, blocks=blocks, stats=stats
        )
        verified = VerifiedStates(cache, blocks)
        self.downloads = Downloads(
            source, repository, cache, flights=self.flights, memory=self.memory,
            writes=self.writes, verified=verified, background=self.background, blocks=blocks,
            stats=stats, timeout=timeout,
        )  # fmt: skip
        self.verifier = Verifier(
            cache, self.memory, Jobs(nursery, "verifying a blob"), budget=writes,
            writes=self.writes, downloads=self.downloads, verified=verified,
            fetch_block=self.block, forget=self.forget, blocks=blocks, stats=stats,
            origin=self.describe(), full=verify == "full", on_corrupt=on_corrupt,
        )  # fmt: skip
        self._readahead = Readahead(memory_bytes * 3 // 4)
        self.small = SmallReads(cache, self.flights, blocks, stats)

    def _pin(self, key: tuple[str, int]) -> None:
        if not self.source.in_place:
            self.cache.pin(key[0], self.block_size, key[1])

    def _unpin(self, key: tuple[str, int]) -> None:
        if not self.source.in_place:
            self.cache.unpin(key[0], self.block_size, key[1])

    def describe(self) -> str:
        """The source and repository, for messages."""
        return f"{self.source.registry}/{self.repository}"

    def _written(self, digest: str, size: int, index: int, block: Buffer) -> None:
        """A block of a blob of ``size`` bytes is on disk: it counts towards verifying it."""
        self.verifier.seen(digest, size, index, block)

    async def read_source(self, digest: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the blob straight from its source, not cached."""
        return await self.source.get_range(self.repository, digest, start, end)

    # --- reads ------------------------------------------------------------------------------

    async def read(
        self, digest: str, size: int, offset: int, length: int, hint: ReadHint = READ_AHEAD
    ) -> bytes:
        """Bytes ``[offset, offset + length)`` of the blob, clipped at its end. A reader going
        in order gets what follows fetched ahead (unless the hint says it is no reader), up to
        the end of the file it reads when known; the rest of a unit read whole (a tensor) at
        once (:class:`~modelkitfs.blobs.readahead.ReadHint`)."""
        end = min(offset + length, size)
        if (direct := await self._direct(digest, offset, end)) is not None:
            return direct
        if self.verifier.must_verify(digest):
            await self.verifier.verified(digest, size)
        small = end - offset <= self.block_size // SMALL_READ
        if hint.ahead:
            self._ahead(digest, size, offset, end, hint, keep=small)
        parts = [
            self._part_now(digest, size, i, span, small)
            or await self._part(digest, size, i, span, small, (end - 1) // self.block_size)
            for i, span in self.blocks.spans(offset, end)
        ]
        if hint.ahead:
            self._passed(digest, offset, end)
        return b"".join(parts)

    def read_now(
        self, digest: str, size: int, offset: int, length: int, hint: ReadHint = READ_AHEAD
    ) -> bytes | None:
        """What :meth:`read` answers (fetching ahead), if it can be had at once: each block it
        needs in memory, or (a small read of a checked block) its pages in the page cache;
        else None. No task, no thread, no wait: such a request costs the event loop little."""
        end = min(offset + length, size)
        if offset >= end:
            return b""
        if self.source.in_place or self.verifier.must_verify(digest):
            return None
        small = end - offset <= self.block_size // SMALL_READ
        parts = []
        for i, span in self.blocks.spans(offset, end):
            if (part := self._part_now(digest, size, i, span, small)) is None:
                return None
            parts.append(part)
        if hint.ahead:
            self._ahead(digest, size, offset, end, hint, keep=small)
            self._passed(digest, offset, end)
        return b"".join(parts)

    async def read_held(self, digest: str, size: int, offset: int, length: int) -> bytes | None:
        """Bytes ``[offset, offset + length)`` of the blob, if each block they lie in is held
        here already: in memory, or checked in this process (its pages then read and checked
        again, as a small read's are); else None. Never fetched, never waited for, no reader
        seen: the FUSE layer pushes what this returns into the kernel's page cache around a
        random reader's reads, and a push must cost no download and no wrong byte."""
        end = min(offset + length, size)
        if (direct := await self._direct(digest, offset, end)) is not None:
            return direct
        if self.verifier.must_verify(digest):
            return None
        parts: list[Buffer] = []
        for i, span in self.blocks.spans(offset, end):
            if (block := self.memory.get((digest, i))) is not None:
                parts.append(memoryview(block)[span[0] : span[1]])
            elif (pages := self.small.now(digest, size, i, span)) is not None:
                parts.append(pages)  # from the page cache: no worker thread
            elif (pages := await self.small.read(digest, size, i, span)) is not None:
                parts.append(pages)
            else:
                return None
        return b"".join(parts)

    async def _direct(self, digest: str, offset: int, end: int) -> bytes | None:
        """The answer to a read of ``[offset, end)`` that takes no block: nothing, or bytes of
        a blob read in place; else None."""
        if offset >= end:
            return b""
        if self.source.in_place:
            return await self.read_source(digest, offset, end)
        return None

    def _ahead(
        self, digest: str, size: int, offset: int, end: int, hint: ReadHint, *, keep: bool
    ) -> None:
        """Start fetching what the readahead advises after a read of ``[offset, end)``; ``keep``
        (a small reader's): blocks read from disk leave their pages in the page cache, for
        its small reads of them."""
        for start, stop in self._readahead.advise(digest, size, offset, end, hint):
            # Reserved now, before the read looks for its own blocks, so that a block both
            # want is fetched once, as part of the larger request.
            flights = self.flights.reserve(
                digest, start // self.block_size, (stop - 1) // self.block_size, self.memory
            )
            if flights:
                self.background.start(self._fetch_ahead, digest, size, flights, keep)

    def _passed(self, digest: str, offset: int, end: int) -> None:
        """A reader in order has read the blocks ``[offset, end)`` ends in: they leave memory
        first."""
        for index in range(offset // self.block_size, end // self.block_size):
            self.memory.passed((digest, index))

    def _part_now(
        self, digest: str, size: int, index: int, span: tuple[int, int], small: bool
    ) -> Buffer | None:
        """Bytes ``span`` of block ``index`` if they can be had at once: the block in memory,
        or (a ``small`` read) the pages of a block checked before, in the page cache; else
        None. A block in memory read by a small read has its page sums remembered: it will
        be read so again once it has left memory."""
        key = (digest, index)
        if (block := self.memory.get(key)) is not None:
            self.stats.memory_hits += 1
            if small:
                self.small.remember(key, block)
            return memoryview(block)[span[0] : span[1]]
        return self.small.now(digest, size, index, span) if small else None

    async def _part(
        self,
        digest: str,
        size: int,
        index: int,
        span: tuple[int, int],
        small: bool,
        wanted_last: int,
    ) -> Buffer:
        """Bytes ``span`` of block ``index``, waiting: a small read of a checked block reads
        its pages from the disk cache; else the whole block is taken (and checked, when it
        comes from disk: through the page cache, its pages left there for the small reads
        that follow, as a folder of small files has them), its page sums remembered."""
        if small and (pages := await self.small.read(digest, size, index, span)) is not None:
            return pages
        block = await self.block(digest, size, index, wanted_last, keep=small)
        if small:
            self.small.remember((digest, index), block)
        return memoryview(block)[span[0] : span[1]]

    async def _fetch_ahead(
        self, digest: str, size: int, flights: dict[int, Flight], keep: bool = False
    ) -> None:
        """Bring reserved blocks into memory for a reader that will want them soon: from the
        disk cache (a few at a time, so the reader waits for a few, not all), and downloaded
        where absent. A failure only costs that reader a wait: its own read fetches and
        reports."""
        try:
            on_disk = self.cache.cached_blocks(digest, self.block_size, min(flights), max(flights))
            absent = {i: f for i, f in flights.items() if i not in on_disk}
            present = sorted(i for i in flights if i in on_disk)

            async def load_present() -> None:
                for start in range(0, len(present), LOAD_RUN):
                    run = present[start : start + LOAD_RUN]
                    run_flights = {i: flights[i] for i in run}
                    await self._load(digest, size, run_flights, on_disk, keep=keep)

            if not absent:  # a warm reader's: no nursery to open and close
                await load_present()
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.downloads.fetch, digest, size, absent)
                await load_present()
        except Exception as exc:
            log.debug("reading ahead in %s failed: %s", digest, exc)
        finally:
            self.flights.land(digest, flights)

    async def block(
        self, digest: str, size: int, index: int, wanted_last: int, *, keep: bool = False
    ) -> Buffer:
        """One block, from memory, disk (``keep``: its pages left in the page cache) or the
        source. A reader that finds the block on its way shares that download's outcome,
        failure included: the kernel follows a failed readahead with a read of the page
        itself, at once, and that read must fail with the download rather than wait
        ``--timeout`` once more (the download retries a little longer than a read waits, so a
        fault that clears meanwhile is still ridden out)."""
        key = (digest, index)
        while True:
            if (data := self.memory.get(key)) is not None:
                self.stats.memory_hits += 1
                return data
            if (flight := self.flights.get(key)) is not None:
                await flight.done.wait()
                if flight.error is not None:
                    raise flight.error
                if flight.data is not None:
                    return flight.data
                continue
            mine = self.flights.reserve(digest, index, index, self.memory)
            if (data := (await self._load(digest, size, mine, keep=keep)).get(index)) is not None:
                return data
            if key in self.flights or key in self.memory:
                continue  # someone else started (or finished) it while we looked on disk
            last = min(wanted_last, index + MAX_BLOCKS_PER_REQUEST - 1)
            flights = self.flights.reserve(digest, index, last, self.memory)
            await self.downloads.fetch(digest, size, flights)
            if (own := flights.get(index)) is not None and own.data is not None:
                return own.data

    async def _load(
        self,
        digest: str,
        size: int,
        flights: dict[int, Flight],
        on_disk: set[int] | None = None,
        *,
        keep: bool = False,
    ) -> dict[int, Buffer]:
        """Read reserved blocks from the disk cache, in one worker-thread call (none for
        blocks that are not there: a cold read's every block), and end their flights: those
        found. ``on_disk``: the blocks known to be there, when the caller has looked;
        ``keep``: their pages left in the page cache."""
        if not flights:
            return {}
        try:
            if on_disk is None:
                on_disk = self.cache.cached_blocks(
                    digest, self.block_size, min(flights), max(flights)
                )
            wanted = [i for i in flights if i in on_disk]
            found = (
                await trio.to_thread.run_sync(
                    read_cached, self.cache, self.blocks, digest, size, wanted, keep
                )
                if wanted
                else {}
            )
            self._keep(digest, size, found)
            return found
        except BaseException as exc:
            self.flights.land(digest, flights, for_waiters(exc))
            raise
        finally:
            self.flights.land(digest, flights)

    def _keep(self, digest: str, size: int, found: dict[int, Buffer]) -> None:
        """Hold blocks read from the disk cache in memory."""
        for index, data in found.items():
            self.memory.put((digest, index), data)
            self.verifier.seen(digest, size, index, data)
        self.stats.disk_hits += len(found)

    async def cached_bytes(
        self, digest: str, size: int, start: int = 0, end: int | None = None
    ) -> int:
        """How many of bytes ``[start, end)`` of the blob are in the disk cache (blobs read
        in place: all)."""
        end = size if end is None else min(end, size)
        if start >= end:
            return 0
        if self.source.in_place:
            return end - start
        first, last = start // self.block_size, (end - 1) // self.block_size
        cached = await trio.to_thread.run_sync(
            self.cache.cached_blocks, digest, self.block_size, first, last
        )
        return sum(
            min(end, (i + 1) * self.block_size) - max(start, i * self.block_size) for i in cached
        )

    async def cached_block(self, digest: str, index: int, expected_size: int) -> Buffer | None:
        """Block ``index`` of ``digest`` from memory or the disk cache, or None."""
        key = (digest, index)
        if (data := self.memory.get(key)) is not None:
            self.stats.memory_hits += 1
            return data
        data = await trio.to_thread.run_sync(
            self.cache.read_block, digest, self.block_size, index, expected_size
        )
        if data is not None:
            self.stats.disk_hits += 1
            self.memory.put(key, data)
        return data

    async def flush(self) -> None:
        """Wait until every block written behind is on disk, and every verification under
        way has recorded its result (else the next mount would hash the blob again)."""
        for _ in range(3):  # a write that completes a blob starts its verification
            await self.writes.join()
            await self.verifier.jobs.join()
            if not self.writes.jobs.running:
                return

    def stop_ahead(self) -> None:
        """Stop fetching ahead and streaming: the readers they were for are gone."""
        self.background.cancel()

    async def forget(self, digest: str) -> None:
        """Drop every block of ``digest`` from memory and disk (its bytes proved wrong)."""
        self.memory.forget(digest)
        self.small.checked.forget(digest)
        self.verifier.forget(digest)
        await trio.to_thread.run_sync(self.cache.remove_blocks, digest)

    async def load_meta(self, digest: str, name: str) -> bytes | None:
        return await trio.to_thread.run_sync(self.cache.read_meta, digest, name)

    async def save_meta(self, digest: str, name: str, data: bytes) -> None:
        try:
            await trio.to_thread.run_sync(self.cache.write_meta, digest, name, data)
        except OSError as exc:  # the cache warned once: it cannot be written
            log.debug("could not save %s for %s in the cache: %s", name, digest, exc)
