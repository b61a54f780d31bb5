"""Downloading reserved blocks from the source, once across every process on the cache.

Blocks go out a range request per run of adjacent ones (up to ``MAX_BLOCKS_PER_REQUEST``),
and each lands the moment it arrives (:class:`_Arrivals`): its readers wake, it goes to memory
and to the disk behind them, so that neither a reader's wait nor the memory held grows with
the size of the request. Before a run is asked for, its blocks are claimed in the cache: a block
another process is downloading is waited for and then read from disk, rather than downloaded
twice; but not for longer than ``CLAIM_PATIENCE`` of ``--timeout``, as that process may be
stopped (Ctrl-Z, SIGSTOP) or stuck: then the claim is overtaken, the blocks downloaded here too,
and so are that blob's blocks claimed elsewhere while any such claim lasts (issue 29). Two
downloads of a block beat a failed read, and cost nothing else: block files are written whole,
under a temporary name, then renamed.
Of a blob verified before, every block is checked against its hash as it arrives and asked for
again, with the rest of its run, when wrong (a glitch of a registry or a proxy), up to
``DOWNLOAD_ATTEMPTS`` times: wrong bytes are never kept. An answer shorter or longer than the
range is an error, never a block.

**Sources that ignore Range** (issue 18, case 7): a server that answers every range with the
whole blob (200) would send the blob from its start for each run, so that reading a 10 GiB blob
in 16 MiB runs moves terabytes. Once the source has met such a host (or a request raises
:class:`~modelkitfs.errors.RangeIgnored`), a blob's missing blocks are instead fetched by one
background stream per blob, from its first missing block to its last, a window at a time, in
order: the transport carries on reading the whole-blob answer it kept open where the last
window stopped, so the blob crosses the network once (through a proxy no answer is kept open:
each window costs the blob up to it, as each run did before). Every reader that wants a block
of it waits on its flight; the stream lands each block as its window arrives.
"""

from __future__ import annotations

import logging

import trio

from modelkitfs.blobs.blocks import Blocks, CacheStats
from modelkitfs.blobs.flights import Flight, Flights, for_waiters
from modelkitfs.blobs.jobs import Jobs
from modelkitfs.blobs.sha256chain import block_in_chain
from modelkitfs.blobs.verified import VerifiedStates
from modelkitfs.blobs.write_behind import WriteBehind
from modelkitfs.cache import BlockCache, BlockClaim, BlockMemory
from modelkitfs.errors import DigestMismatch, RangeIgnored, RegistryError
from modelkitfs.primitives.buffers import Buffer
from modelkitfs.registry.source import BlobSource, Deliver

log = logging.getLogger(__name__)

MAX_BLOCKS_PER_REQUEST = 32
# Blocks per request of a blob streamed from a server that ignores Range: a small first window
# lands the first blocks soon, then windows as large as runs (through a proxy, where the
# transport keeps no answer open, each window costs the blob up to it, as each run did).
FIRST_STREAM_WINDOW = 4
DOWNLOAD_ATTEMPTS = 3  # of a run whose bytes differ from those verified before
IN_ORDER_ATTEMPTS = 3  # of a range read in order whose whole-blob answer was not kept
LOCK_POLL_MAX = 0.1
CLAIM_PATIENCE = 0.5  # of --timeout: the rest is left for downloading the blocks here


class Downloads:
    """Downloads blocks of the blobs of ``repository`` of ``source`` into ``flights``, claimed
    in ``cache`` and written behind by ``writes``; blocks of a blob in ``verified`` are checked
    against its states. A blob streamed runs in ``background``."""

    def __init__(
        self,
        source: BlobSource,
        repository: str,
        cache: BlockCache,
        *,
        flights: Flights,
        memory: BlockMemory,
        writes: WriteBehind,
        verified: VerifiedStates,
        background: Jobs,
        blocks: Blocks,
        stats: CacheStats,
        timeout: float,
    ) -> None:
        self.source, self.repository, self.cache = source, repository, cache
        self.flights, self.memory, self.writes = flights, memory, writes
        self.verified, self.background = verified, background
        self.blocks, self.stats = blocks, stats
        self.timeout = timeout  # seconds a read may take (--timeout)
        self._streams: dict[str, dict[int, Flight]] = {}  # blobs streamed: flights they land
        self._overtaking: set[str] = set()  # blobs of which another claim was held too long

    async def fetch(self, digest: str, size: int, flights: dict[int, Flight]) -> None:
        """Download reserved blocks and land their flights (those left out: their readers look
        again, and find them on disk or fetch them)."""
        try:
            if not self.source.ignores_range:
                try:
                    await self._by_runs(digest, size, flights)
                    return
                except RangeIgnored:
                    pass  # the server's habit, learnt now: what is left comes by the stream
            left = {i: f for i, f in flights.items() if f.data is None and not f.done.is_set()}
            await self._by_stream(digest, size, left)
        except BaseException as exc:
            self.flights.land(digest, flights, for_waiters(exc))
            raise
        finally:
            self.flights.land(digest, flights)

    async def _by_runs(self, digest: str, size: int, flights: dict[int, Flight]) -> None:
        runs: list[list[int]] = []
        for index in sorted(flights):
            if runs and index == runs[-1][-1] + 1 and len(runs[-1]) < MAX_BLOCKS_PER_REQUEST:
                runs[-1].append(index)
            else:
                runs.append([index])
        for run in runs:
            await self.fetch_run(digest, size, run[0], run[-1])

    async def fetch_run(
        self, digest: str, size: int, first: int, last: int, *, in_order: bool = False
    ) -> list[int]:
        """Claim blocks ``first`` to ``last`` (as far as no other process holds them) and
        download them, each landed as it arrives; the indexes downloaded. ``in_order``: see
        :meth:`download`."""
        await self.writes.room()
        claim = await self._claim(digest, first, last)
        if claim is None:
            return []  # another process cached it meanwhile
        arrivals = _Arrivals(self, digest, size, first, claim)
        try:
            await self.download(arrivals, max(claim.held), in_order=in_order)
        finally:
            for index in claim.held - set(arrivals.landed):
                claim.release(index)
        return arrivals.landed

    async def uncached(self, digest: str, size: int, first: int, last: int) -> list[Buffer]:
        """Blocks ``first`` to ``last``, checked as :meth:`download` does, but neither cached
        nor handed to readers (a blob too large for the cache, hashed as it streams by)."""
        kept = _Kept(self, digest, size, first)
        await self.download(kept, last, in_order=True)
        return kept.blocks

    async def download(self, arrivals: _Arrivals, last: int, *, in_order: bool = False) -> None:
        """Blocks from ``arrivals.next`` to ``last`` from the source, landed as they arrive,
        each checked against its hash when the blob was verified before; a block that proves
        wrong is asked for again with the rest, up to ``DOWNLOAD_ATTEMPTS`` times in all.
        ``in_order``: the caller reads the blob in order (a stream, a hash): when the server
        answers with the whole blob, ask again at once, to carry on that answer, rather than
        raise :class:`RangeIgnored`."""
        digest, block_size = arrivals.digest, self.blocks.size
        await self.verified.known(digest)  # each block is checked against them
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            arrivals.restart()
            start = arrivals.next * block_size
            end = min((last + 1) * block_size, arrivals.size)
            await self._range(digest, start, end, in_order, arrivals)
            if arrivals.error is not None:
                raise arrivals.error
            if arrivals.wrong is None:
                if arrivals.next * block_size < end:
                    raise RegistryError(
                        f"{self.source.registry}/{self.repository} answered "
                        f"{arrivals.received} bytes for {end - start} of blob {digest} "
                        f"(bytes {start}-{end - 1}): a broken registry or proxy; report it to "
                        "its owner"
                    )
                return
            log.warning(
                "block %d of blob %s came with bytes that differ from those verified before "
                "(attempt %d of %d)",
                arrivals.wrong,
                digest,
                attempt,
                DOWNLOAD_ATTEMPTS,
            )
        raise DigestMismatch(
            f"block {arrivals.wrong} of blob {digest} from {self.source.registry} differs "
            f"from the bytes verified before, {DOWNLOAD_ATTEMPTS} times: the registry or a "
            "proxy serves wrong bytes; try again later or report it to the registry owner"
        )

    async def _range(
        self, digest: str, start: int, end: int, in_order: bool, deliver: Deliver
    ) -> None:
        """The bytes from the source; ``in_order``, asked again while the answer is a whole
        blob kept open at its start (another blob's answer may have pushed it out meanwhile:
        at most ``MAX_KEPT`` are kept)."""
        for _ in range(IN_ORDER_ATTEMPTS - 1 if in_order else 0):
            try:
                return await self.source.deliver_range(
                    self.repository, digest, start, end, self.blocks.size, deliver
                )
            except RangeIgnored:
                pass
        await self.source.deliver_range(
            self.repository, digest, start, end, self.blocks.size, deliver
        )

    async def _claim(self, digest: str, first: int, last: int) -> BlockClaim | None:
        """Claims of block ``first`` and of the absent blocks after it up to ``last``, waiting
        while another process holds the first, up to ``CLAIM_PATIENCE`` of the timeout, then
        overtaking its claims; None when the block turned up in the cache meanwhile."""
        overtake = digest in self._overtaking
        started = trio.current_time()
        delay = 0.005
        while True:
            claim = await trio.to_thread.run_sync(
                self.cache.claim_run, digest, self.blocks.size, first, last, overtake
            )
            if claim is None or claim.held:
                if claim is not None and claim.overtaken and digest not in self._overtaking:
                    self._overtaking.add(digest)
                    log.warning(
                        "blocks %d-%d of blob %s have been claimed by another download for "
                        "%.1f s (a process using the cache may be stopped or stuck: resume or "
                        "end it): downloading them here too",
                        min(claim.overtaken),
                        max(claim.overtaken),
                        digest,
                        trio.current_time() - started,
                    )
                elif overtake and claim is not None:
                    self._overtaking.discard(digest)  # no claim of it is held too long now
                return claim
            if trio.current_time() - started >= self.timeout * CLAIM_PATIENCE:
                overtake = True
                continue
            await trio.sleep(delay)
            delay = min(delay * 2, LOCK_POLL_MAX)

    # --- one stream per blob, for sources that ignore Range ---------------------------------

    async def _by_stream(self, digest: str, size: int, flights: dict[int, Flight]) -> None:
        """Hand reserved flights to the blob's stream (starting it if none runs) and wait
        until they have landed."""
        stream = self._streams.get(digest)
        if stream is None:
            stream = self._streams[digest] = {}
            self.background.start(self._stream, digest, size)
        stream.update(flights)
        for flight in flights.values():
            await flight.done.wait()

    async def _stream(self, digest: str, size: int) -> None:
        """Land the blob's missing blocks in order, a window at a time, until no reader waits
        for one; the flights of the blocks not yet in the cache are taken up front, so that
        every reader waits for this one download."""
        flights = self._streams[digest]
        try:
            count = self.blocks.count(size)
            cached = await trio.to_thread.run_sync(
                self.cache.cached_blocks, digest, self.blocks.size, 0, count - 1
            )
            for index in range(count):
                if index not in cached:
                    flights.update(self.flights.reserve(digest, index, index, self.memory))
            # Each pass lands at least its first block; readers may add blocks behind it.
            window = FIRST_STREAM_WINDOW
            for _ in range(4 * count + 16):
                if not flights:
                    return
                first = min(flights)
                last = min(first + window, count) - 1
                window = MAX_BLOCKS_PER_REQUEST
                done = await self.fetch_run(digest, size, first, last, in_order=True)
                landed = {i: flights.pop(i) for i in [first, *done] if i in flights}
                self.flights.land(digest, landed)
            raise RegistryError(f"streaming blob {digest} made no progress")  # a bug: say so
        except BaseException as exc:
            self.flights.land(digest, flights, for_waiters(exc))
            if not isinstance(exc, Exception):
                raise
            log.debug("streaming %s failed: %s", digest, exc)  # its readers were told
        finally:
            del self._streams[digest]
            self.flights.land(digest, flights)


class _Arrivals:
    """Lands a run's blocks as the source delivers them, in order, from ``first``: each goes
    to its readers (its flight), to memory and to the disk behind them, its download claim with
    it, the moment it arrives. It runs on the event loop but outside any task (the threaded
    transport calls it through ``run_sync_soon``), so it never raises and never waits: a block
    of the wrong length or hash stops it, and :meth:`Downloads.download` reports or asks again
    from there."""

    def __init__(
        self, downloads: Downloads, digest: str, size: int, first: int, claim: BlockClaim | None
    ) -> None:
        self.downloads, self.digest, self.size, self.claim = downloads, digest, size, claim
        self.next = first  # the block expected next
        self.landed: list[int] = []
        self.received = 0  # bytes delivered by the current request
        self.short = False  # a block of the current request came short
        self.wrong: int | None = None  # the block that came with other bytes than verified
        self.error: Exception | None = None

    def restart(self) -> None:
        """Take the blocks of a new request, from ``next`` on."""
        self.received, self.short, self.wrong, self.error = 0, False, None, None

    def __call__(self, block: memoryview) -> None:
        self.received += len(block)
        if self.short or self.wrong is not None or self.error is not None:
            return  # stopped: the rest of this request is dropped
        downloads, index = self.downloads, self.next
        try:
            if len(block) != downloads.blocks.length(self.size, index):
                self.short = True  # download() says so, with the bytes counted
                return
            # Of a blob verified before (its record was loaded before the request).
            states = downloads.verified.get(self.digest)
            if states is not None and not block_in_chain(
                block, index, downloads.blocks.size, states, self.digest
            ):
                self.wrong = index
                return
            downloads.stats.downloaded_blocks += 1
            self.land(index, block)
            self.landed.append(index)
            self.next += 1
        except Exception as exc:  # a bug: never into the event loop
            self.error = exc

    def land(self, index: int, block: memoryview) -> None:
        flights = self.downloads.flights
        if (flight := flights.get((self.digest, index))) is not None:
            flight.data = block
            flights.land(self.digest, {index: flight})  # its readers take it now
        # Its claim goes along, released once the block is on disk.
        self.downloads.writes.put(self.digest, index, block, claim=self.claim, size=self.size)


class _Kept(_Arrivals):
    """Arrivals kept in a list rather than landed (a blob hashed as it streams by)."""

    def __init__(self, downloads: Downloads, digest: str, size: int, first: int) -> None:
        super().__init__(downloads, digest, size, first, None)
        self.blocks: list[Buffer] = []

    def land(self, index: int, block: memoryview) -> None:
        self.blocks.append(block)
