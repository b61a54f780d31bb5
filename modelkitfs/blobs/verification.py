"""Verification: every blob is checked against its digest, and what "verified" promises stays
true when the cache cannot hold a whole blob.

:class:`Verifier` is the state machine. A blob is hashed in order as its blocks come in, from
memory, off the event loop (a reader streaming a blob pays one SHA-256 pass, and no second
read of the blob from disk); once all of its blocks are cached, what the in-order pass has not
reached is read from disk and hashed. Its chaining states (:mod:`~modelkitfs.blobs.sha256chain`)
are then kept, in memory and in the record ``verified.v2.json`` shared with every process, so a
block downloaded again later is checked on its own. A blob that fails is evicted, marked bad,
and served again only once a new download verifies. With ``--verify full`` a blob is
downloaded and verified whole before any byte of it is served. One verification per blob runs
at a time (a keyed single flight).

The record outlives the blocks: evicting a block must not make it lie, so nothing here takes
the record for the blocks. It only says how to check a block downloaded again. Hence:

- :func:`complete_blob` (``prefetch``, ``--prefetch``): every block on disk when it returns,
  fetching what eviction took (each block checked against its state), or an error saying why
  the cache cannot keep them all;
- :func:`hash_streaming` (``--verify full`` on a cache that cannot keep the blob: smaller than
  it, read-only, full): the blob hashed as it is downloaded, block by block, without keeping
  it; reads then download each block again and check it against its state.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from modelkitfs.blobs.blocks import Blocks, CacheStats, read_cached
from modelkitfs.blobs.downloads import Downloads
from modelkitfs.blobs.jobs import Jobs
from modelkitfs.blobs.sha256chain import BlobChain
from modelkitfs.blobs.verified import VerifiedStates
from modelkitfs.blobs.write_behind import WriteBehind
from modelkitfs.cache import BlockCache, BlockMemory, CacheWrites
from modelkitfs.errors import DigestMismatch, ModelKitFSError
from modelkitfs.primitives.buffers import Buffer
from modelkitfs.primitives.singleflight import SingleFlight

log = logging.getLogger(__name__)

RUN = 16  # blocks fetched or hashed together
AHEAD = 16  # blocks held for the in-order hashes of a store, past the ones they wait for

FetchBlock = Callable[[str, int, int, int], Awaitable[Buffer]]  # digest, size, index, last


class _InOrder:
    """A blob hashed in order so far; one step at a time (``lock``). The blocks seen a little
    ahead of it wait in ``ahead`` (a reader passing them lets memory drop them first)."""

    def __init__(self, count: int) -> None:
        self.chain = BlobChain(count)
        self.lock = trio.Lock()
        self.advancing = False
        self.ahead: dict[int, Buffer] = {}


class Verifier:
    """Verifies the blobs of ``origin`` (``registry/repository``, for messages) as their
    blocks reach ``cache``: from ``memory`` and the disk, fetching what is missing with
    ``fetch_block`` (the read path's) and ``downloads``, and waiting for ``writes``; the
    states of verified blobs go to ``verified``. ``forget`` drops a blob that failed."""

    def __init__(
        self,
        cache: BlockCache,
        memory: BlockMemory,
        jobs: Jobs,
        *,
        budget: CacheWrites,
        writes: WriteBehind,
        downloads: Downloads,
        verified: VerifiedStates,
        fetch_block: FetchBlock,
        forget: Callable[[str], Awaitable[None]],
        blocks: Blocks,
        stats: CacheStats,
        origin: str,
        full: bool = False,
        on_corrupt: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.cache = cache
        self.memory = memory
        self.jobs = jobs
        self.budget = budget  # whether the cache may keep a blob whole
        self.writes = writes
        self.downloads = downloads
        self.records = verified
        self.states = verified.states  # chaining states of verified blobs
        self.fetch_block = fetch_block
        self.drop = forget
        self.blocks = blocks
        self.stats = stats
        self.origin = origin
        self.full = full  # --verify full: nothing served before its blob verified
        self.on_corrupt = on_corrupt  # e.g. make the kernel forget the blob's pages
        self._present: dict[str, set[int]] = {}  # blocks seen cached, per blob
        self._in_order: dict[str, _InOrder] = {}  # blobs being hashed as blocks come in
        self._flight: SingleFlight[str, None] = SingleFlight()
        self._bad: set[str] = set()  # failed verification: served only once verified anew
        self._background: set[str] = set()  # blobs a background job verifies now

    def must_verify(self, digest: str) -> bool:
        """Whether ``digest`` is served only once verified whole: always with ``--verify
        full``, and after it failed verification."""
        return self.full or digest in self._bad

    def is_verified(self, digest: str) -> bool:
        return digest in self.states and digest not in self._bad

    def seen(self, digest: str, size: int, index: int, block: Buffer | None = None) -> None:
        """Note a cached block (``block``: its bytes): hash the blob on from it if it is the
        next in order; once all of a blob are cached, verify it in the background."""
        if digest in self.states or not self.cache.writable:
            return
        present = self._present.setdefault(digest, set())
        present.add(index)
        count = self.blocks.count(size)
        in_order = self._in_order.get(digest) or self._in_order.setdefault(digest, _InOrder(count))
        # Held while near the hash (bounded per store, whatever its readers do).
        near = in_order.chain.next <= index < in_order.chain.next + AHEAD
        if block is not None and near and self._held() < AHEAD:
            in_order.ahead[index] = block
        if index == in_order.chain.next and not in_order.advancing:
            in_order.advancing = True
            self.jobs.start(self._advance, digest, in_order)
        if len(present) == count and digest not in self._background:
            self._background.add(digest)
            self.jobs.start(self._quietly, digest, size)

    def forget(self, digest: str) -> None:
        self._present.pop(digest, None)
        self._in_order.pop(digest, None)

    def _held(self) -> int:
        return sum(len(in_order.ahead) for in_order in self._in_order.values())

    async def _advance(self, digest: str, in_order: _InOrder) -> None:
        """Hash the blob on, in order, from the blocks in memory (the ones just downloaded
        or read), ``RUN`` at a time, until the next one is not there. Blobs verified before
        (by any process) are not hashed again."""
        chain = in_order.chain
        try:
            if await self.known_states(digest) is not None:
                self._in_order.pop(digest, None)  # nor are blocks held for it
                return
            while self._in_order.get(digest) is in_order:
                async with in_order.lock:
                    if not (blocks := self._from_memory(digest, in_order)):
                        return
                    await trio.to_thread.run_sync(chain.feed, blocks)
        finally:
            in_order.advancing = False

    def _from_memory(self, digest: str, in_order: _InOrder) -> list[Buffer]:
        """The next blocks to hash (up to ``RUN``) that are held or in memory."""
        chain, blocks = in_order.chain, []
        for index in [i for i in in_order.ahead if i < chain.next]:
            del in_order.ahead[index]
        for index in range(chain.next, min(chain.next + RUN, chain.count)):
            block = in_order.ahead.pop(index, None)
            if block is None and (block := self.memory.peek((digest, index))) is None:
                break
            blocks.append(block)
        return blocks

    async def _quietly(self, digest: str, size: int) -> None:
        try:
            await self.verified(digest, size, fetch=False)
        except ModelKitFSError:
            pass  # logged where it was found; reads of the blob now fail until it verifies
        finally:
            self._background.discard(digest)

    async def verified(
        self, digest: str, size: int, *, fetch: bool = True, complete: bool = False
    ) -> None:
        """Make sure ``digest`` hashes to the digest, downloading what is missing (unless
        ``fetch`` is False); raise if it does not. Its chaining states are then known, so
        every block downloaded later is checked on its own. With ``complete`` (a prefetch),
        every block must also be in the disk cache when this returns: blocks evicted since are
        fetched again; raises when the cache cannot keep them all. Without it, a blob the
        cache cannot keep whole is hashed as it streams by (``--verify full``)."""
        # A flight that did not fetch (one started when the last block was cached) may end
        # unverified: a reader that needs the blob verified then runs one that fetches.
        for _ in range(3):
            if self.is_verified(digest):
                break
            await self._flight.run(digest, self._verify, digest, size, fetch, not complete)
            if not fetch:
                return
        else:
            raise DigestMismatch(self._mismatch(digest))
        if complete:
            await self.complete(digest, size)

    async def _verify(self, digest: str, size: int, fetch: bool, stream: bool) -> None:
        if await self.known_states(digest) is not None and digest not in self._bad:
            return
        chain: BlobChain | None
        if fetch and not self.budget.keeps(size):
            if not stream:  # a prefetch: what it fetched would not stay
                raise self.budget.cannot_keep(digest, size)
            chain = await self.hash_streaming(digest, size)  # else downloaded twice
        else:
            if fetch:
                await self._fetch_all(digest, size)
                await self.writes.join()
            chain = await self._hash_rest(digest, size)
        if chain is None:
            if not fetch:
                return  # a block left the cache meanwhile: verify when it is back
            if not stream:
                raise self.budget.cannot_keep(digest, size)
            chain = await self.hash_streaming(digest, size)
        self._in_order.pop(digest, None)
        if chain.digest != digest:
            self.stats.corrupt_blobs += 1
            self._bad.add(digest)
            self.states.pop(digest, None)
            await self.drop(digest)
            if self.on_corrupt is not None:
                await self.on_corrupt(digest)
            log.error("%s", self._mismatch(digest, chain.digest))  # once the pages are gone
            raise DigestMismatch(self._mismatch(digest, chain.digest))
        self._bad.discard(digest)
        self.stats.verified_blobs += 1
        await self.records.save(digest, chain, size)
        log.info("verified %s (%d bytes)", digest, size)

    def _mismatch(self, digest: str, actual: str | None = None) -> str:
        got = f" (its bytes hash to {actual})" if actual else ""
        return (
            f"blob {digest} from {self.origin} failed verification{got}: evicted "
            "from the cache; reads of it fail until a new download verifies; the registry or a "
            "proxy served wrong bytes"
        )

    async def known_states(self, digest: str) -> list[bytes] | None:
        """Chaining states of a blob verified before (by any process), if any."""
        return await self.records.known(digest)

    async def _fetch_all(self, digest: str, size: int) -> None:
        count = self.blocks.count(size)
        self._bad.discard(digest)  # a fresh download gets its chance

        async def fetch(first: int) -> None:
            last = min(first + RUN, count) - 1
            for index in range(first, last + 1):
                await self.fetch_block(digest, size, index, last)

        async with trio.open_nursery() as nursery:
            for first in range(0, count, RUN):
                nursery.start_soon(fetch, first)

    async def _hash_rest(self, digest: str, size: int) -> BlobChain | None:
        """The blob hashed to its end: on from where the in-order pass got, with the rest of
        its blocks taken from memory where they still are, else read from the disk cache;
        None if one is missing."""
        in_order = self._in_order.setdefault(digest, _InOrder(self.blocks.count(size)))
        async with in_order.lock:
            chain = in_order.chain
            while chain.digest is None:
                blocks = self._from_memory(digest, in_order) or await trio.to_thread.run_sync(
                    self._read_run, digest, size, chain.next
                )
                if not blocks:
                    return None
                await trio.to_thread.run_sync(chain.feed, blocks)
        return chain

    def _read_run(self, digest: str, size: int, first: int) -> list[Buffer]:
        """Up to ``RUN`` blocks from the disk cache from ``first``, as far as they are there.
        Runs in a worker thread."""
        blocks = []
        for index in range(first, min(first + RUN, self.blocks.count(size))):
            block = self.cache.read_block(
                digest, self.blocks.size, index, self.blocks.length(size, index)
            )
            if block is None:
                break
            blocks.append(block)
        return blocks

    async def _missing(self, digest: str, size: int) -> list[int]:
        """Blocks of the blob that are not in the disk cache now."""
        count = self.blocks.count(size)
        present = await trio.to_thread.run_sync(
            self.cache.cached_blocks, digest, self.blocks.size, 0, count - 1
        )
        return [index for index in range(count) if index not in present]

    async def complete(self, digest: str, size: int) -> None:
        """Make sure every block of the blob (verified: its states are known) is in the disk
        cache, downloading what is missing; raise when the cache cannot keep them all."""
        missing = await self._missing(digest, size)
        if not missing:
            return
        for index in missing:  # held in memory only: fetch it (or take it from disk) to write
            self.memory.pop((digest, index))

        async def fetch(run: list[int]) -> None:
            for index in run:
                await self.fetch_block(digest, size, index, run[-1])

        async with trio.open_nursery() as nursery:
            for start in range(0, len(missing), RUN):
                nursery.start_soon(fetch, missing[start : start + RUN])
        await self.writes.join()
        if await self._missing(digest, size):
            raise self.budget.cannot_keep(digest, size)

    async def hash_streaming(self, digest: str, size: int) -> BlobChain:
        """The blob hashed from the blocks on disk and the rest downloaded ``RUN`` blocks at
        a time and dropped once hashed."""
        chain = BlobChain(self.blocks.count(size))
        for first in range(0, chain.count, RUN):
            last = min(first + RUN, chain.count) - 1
            found = await trio.to_thread.run_sync(
                read_cached, self.cache, self.blocks, digest, size, range(first, last + 1)
            )
            blocks: list[Buffer] = []
            index = first
            while index <= last:
                if index in found:
                    blocks.append(found[index])
                    index += 1
                    continue
                stop = index
                while stop + 1 <= last and stop + 1 not in found:
                    stop += 1
                blocks.extend(await self.downloads.uncached(digest, size, index, stop))
                index = stop + 1
            await trio.to_thread.run_sync(chain.feed, blocks)
        return chain
