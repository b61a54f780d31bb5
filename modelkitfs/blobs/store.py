"""Random access to layer blobs, one fixed-size block at a time.

A read is served from, in order: a small in-memory LRU of recent blocks, the shared disk cache,
and the registry. Blocks missing side by side are fetched with one range request. Each block is
downloaded once, however many readers want it at the same moment: within this process they wait
on one download (single flight); other processes on the same cache wait on its download lock.

Every blob is verified against its digest once all its blocks are cached (off the event loop);
its per-block hashes are then kept, so a block downloaded again later is checked on its own. A
blob that fails is evicted and read again only once a new download verifies. With
``verify="full"`` a blob is downloaded and verified whole before any byte of it is served.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from modelkitfs.blobs.block_cache import BlockCache, BlockClaim
from modelkitfs.blobs.budget import CacheBudget
from modelkitfs.blobs.cache import CHECKSUM, Buffer
from modelkitfs.blobs.eviction import PRUNE_TO
from modelkitfs.blobs.memory import BlockMemory
from modelkitfs.blobs.readahead import Readahead
from modelkitfs.blobs.verification import cannot_keep, complete_blob, hash_streaming
from modelkitfs.errors import DigestMismatch, ModelKitFSError
from modelkitfs.registry.source import BlobSource

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 1024 * 1024
MAX_BLOCKS_PER_REQUEST = 16
MEMORY_CACHE_BYTES = 64 * 1024 * 1024
SMALL_BLOB = 1024 * 1024
STREAM_CHUNK = 8 * 1024 * 1024
DERIVED_RECORD = "derived.v1.json"
VERIFIED_RECORD = "verified.v1.json"
LOCK_POLL_MAX = 0.1
WRITE_BEHIND = 32  # blocks waiting for their disk write, per store
DOWNLOAD_ATTEMPTS = 3  # of a run whose bytes differ from those verified before


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    downloaded_blocks: int = 0
    write_failures: int = 0
    verified_blobs: int = 0
    corrupt_blobs: int = 0


@dataclass
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    # The block, once downloaded: its readers take it even when memory has dropped it since
    # (a cache that cannot be written keeps blocks nowhere else).
    data: Buffer | None = None


class BlobStore:
    """Serves byte ranges of the blobs of one repository."""

    def __init__(
        self,
        source: BlobSource,
        repository: str,
        cache: BlockCache,
        *,
        budget: CacheBudget | None = None,
        verify: str = "complete",
        on_corrupt: Callable[[str], Awaitable[None]] | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        memory_bytes: int = MEMORY_CACHE_BYTES,
    ) -> None:
        self.source = source
        self.repository = repository
        self.cache = cache
        self.budget = budget
        self.verify_full = verify == "full"
        self.on_corrupt = on_corrupt  # e.g. make the kernel forget the blob's pages
        self.block_size = block_size
        self.stats = CacheStats()
        # Blocks in memory are in use: pinned in the shared cache, so no process evicts them.
        self._memory = BlockMemory(memory_bytes, self._pin, self._unpin)
        self._flights: dict[tuple[str, int], _Flight] = {}
        self._present: dict[str, set[int]] = {}  # blocks seen cached, per blob
        self._hashes: dict[str, list[str]] = {}  # per-block sha256 of verified blobs
        self._checked_record: set[str] = set()
        self._verifying: dict[str, trio.Event] = {}
        self._bad: set[str] = set()  # failed verification: served only once verified anew
        self._readahead = Readahead()
        self._write_slots = trio.Semaphore(WRITE_BEHIND)

    def _pin(self, key: tuple[str, int]) -> None:
        if not self.source.in_place:
            self.cache.pin(key[0], self.block_size, key[1])

    def _unpin(self, key: tuple[str, int]) -> None:
        if not self.source.in_place:
            self.cache.unpin(key[0], self.block_size, key[1])

    def blob(self, digest: str, size: int) -> Blob:
        return Blob(self, digest, size)

    async def read(
        self,
        digest: str,
        size: int,
        offset: int,
        length: int,
        *,
        ahead: bool = True,
        ahead_limit: int | None = None,
        unit_end: int | None = None,
    ) -> bytes:
        """Bytes ``[offset, offset + length)`` of the blob, clipped at its end. A reader going
        in order gets what follows fetched ahead (unless ``ahead`` is False), up to
        ``ahead_limit`` when the end of what it reads is known; the rest of a unit read whole
        (a tensor), up to ``unit_end``, at once."""
        end = min(offset + length, size)
        if offset >= end:
            return b""
        if self.source.in_place:
            return await self.source.get_range(self.repository, digest, offset, end)
        if self.must_verify(digest):
            await self.verified(digest, size)
        if ahead:
            advice = self._readahead.advise(digest, size, offset, end, ahead_limit, unit_end)
            for start, stop in advice:
                # Reserved now, before this read looks for its own blocks, so that a block
                # both want is fetched once, as part of the larger request.
                flights = self._reserve(
                    digest, start // self.block_size, (stop - 1) // self.block_size
                )
                if flights:
                    trio.lowlevel.spawn_system_task(self._fetch_ahead, digest, size, flights)
        first, last = offset // self.block_size, (end - 1) // self.block_size
        blocks = [await self._block(digest, size, i, last) for i in range(first, last + 1)]
        if ahead:
            for index in range(first, end // self.block_size):
                self._memory.passed((digest, index))
        return _join(blocks, offset - first * self.block_size, end - offset)

    async def _fetch_ahead(self, digest: str, size: int, flights: dict[int, _Flight]) -> None:
        """Bring reserved blocks into memory for a reader that will want them soon: from the
        disk cache (those the page cache holds at once, the others one at a time, so the
        reader waits for one, not all), and downloaded where absent. A failure only costs that
        reader a wait: its own read fetches and reports."""
        try:
            found, on_disk = self._read_cached(digest, size, sorted(flights), nowait=True)
            self._keep(digest, size, found)
            self._land(digest, {i: flights[i] for i in found})
            absent = {i: f for i, f in flights.items() if i not in found and i not in on_disk}
            async with trio.open_nursery() as nursery:
                if absent:
                    nursery.start_soon(self._fetch, digest, size, absent)
                for index in on_disk:
                    await self._load(digest, size, {index: flights[index]})
        except Exception as exc:
            log.debug("reading ahead in %s failed: %s", digest, exc)
        finally:
            self._land(digest, flights)

    def must_verify(self, digest: str) -> bool:
        """Whether ``digest`` is served only once verified whole: always with ``--verify
        full``, and after it failed verification."""
        return self.verify_full or digest in self._bad

    def _block_len(self, size: int, index: int) -> int:
        return min(self.block_size, size - index * self.block_size)

    def _block_count(self, size: int) -> int:
        return max(1, -(-size // self.block_size))

    async def _block(self, digest: str, size: int, index: int, wanted_last: int) -> Buffer:
        """One block, from memory, disk or the registry. A reader that finds the block on its
        way shares that download's outcome, failure included: the kernel follows a failed
        readahead with a read of the page itself, at once, and that read must fail with the
        download rather than wait ``--timeout`` once more (the download retries a little
        longer than a read waits, so a fault that clears meanwhile is still ridden out)."""
        key = (digest, index)
        while True:
            if (data := self._memory.get(key)) is not None:
                self.stats.memory_hits += 1
                return data
            if (flight := self._flights.get(key)) is not None:
                await flight.done.wait()
                if flight.error is not None:
                    raise flight.error
                if flight.data is not None:
                    return flight.data
                continue
            if (
                data := (await self._load(digest, size, self._reserve(digest, index, index))).get(
                    index
                )
            ) is not None:
                return data
            if key in self._flights or key in self._memory:
                continue  # someone else started (or finished) it while we looked on disk
            last = min(wanted_last, index + MAX_BLOCKS_PER_REQUEST - 1)
            flights = self._reserve(digest, index, last)
            await self._fetch(digest, size, flights)
            if (mine := flights.get(index)) is not None and mine.data is not None:
                return mine.data

    def _reserve(self, digest: str, first: int, last: int) -> dict[int, _Flight]:
        """Flights for blocks ``first`` to ``last`` that are neither in memory nor on their
        way, registered at once so that other readers in this process wait on them."""
        flights = {}
        for index in range(first, last + 1):
            key = (digest, index)
            if key not in self._memory and key not in self._flights:
                flights[index] = self._flights[key] = _Flight()
        return flights

    def _land(
        self, digest: str, flights: dict[int, _Flight], error: BaseException | None = None
    ) -> None:
        """End flights: their readers take the block from memory, or look again."""
        for index, flight in flights.items():
            if self._flights.get((digest, index)) is flight:
                del self._flights[digest, index]
            if not flight.done.is_set():
                flight.error = error
                flight.done.set()

    async def _load(self, digest: str, size: int, flights: dict[int, _Flight]) -> dict[int, Buffer]:
        """Read reserved blocks from the disk cache, and end their flights: those found. Bytes
        the page cache holds are read on the event loop (copying a MiB costs less than a trip
        to a worker thread and back); the rest in one worker-thread call."""
        if not flights:
            return {}
        try:
            found, on_disk = self._read_cached(digest, size, list(flights), nowait=True)
            if on_disk:
                more, _ = await trio.to_thread.run_sync(self._read_cached, digest, size, on_disk)
                found.update(more)
            self._keep(digest, size, found)
            return found
        except BaseException as exc:
            self._land(digest, flights, _for_waiters(exc))
            raise
        finally:
            self._land(digest, flights)

    def _read_cached(
        self, digest: str, size: int, indexes: list[int], *, nowait: bool = False
    ) -> tuple[dict[int, Buffer], list[int]]:
        """The blocks found in the disk cache; with ``nowait``, also those that are on disk
        but not in the page cache (reading them would keep the caller waiting for the disk)."""
        found: dict[int, Buffer] = {}
        on_disk = []
        for index in indexes:
            try:
                data = self.cache.read_block(
                    digest, self.block_size, index, self._block_len(size, index), nowait=nowait
                )
            except BlockingIOError:
                on_disk.append(index)
                continue
            if data is not None:
                found[index] = data
        return found, on_disk

    def _keep(self, digest: str, size: int, found: dict[int, Buffer]) -> None:
        """Hold blocks read from the disk cache in memory."""
        for index, data in found.items():
            self._memory.put((digest, index), data)
            self._seen(digest, size, index)
        self.stats.disk_hits += len(found)

    async def cached_bytes(
        self, digest: str, size: int, start: int = 0, end: int | None = None
    ) -> int:
        """How many of bytes ``[start, end)`` of the blob are in the disk cache (kit's local
        blobs: all)."""
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
        if (data := self._memory.get(key)) is not None:
            self.stats.memory_hits += 1
            return data
        try:
            data = self.cache.read_block(digest, self.block_size, index, expected_size, nowait=True)
        except BlockingIOError:
            data = await trio.to_thread.run_sync(
                self.cache.read_block, digest, self.block_size, index, expected_size
            )
        if data is not None:
            self.stats.disk_hits += 1
            self._memory.put(key, data)
        return data

    async def put_block(
        self,
        digest: str,
        index: int,
        data: Buffer,
        *,
        lock: BlockClaim | None = None,
        size: int | None = None,
        behind: bool = True,
    ) -> None:
        """Keep a block in memory at once and on disk when it can. By default the disk write
        happens behind the reader (writing a block file costs about a millisecond of CPU per
        MiB on machines like this one): at most ``WRITE_BEHIND`` blocks wait, then this waits.
        ``lock``, the block's download lock, is released once the block is on disk, so other
        processes wait for it rather than download it; with the blob's ``size``, a written
        block counts towards verifying the blob."""
        self._memory.put((digest, index), data)
        if not behind:
            try:
                await self._store(digest, index, data)
            finally:
                if lock is not None:
                    lock.release(index)
            return
        await self._write_slots.acquire()
        trio.lowlevel.spawn_system_task(self._write_behind, digest, index, data, lock, size)

    async def _write_behind(
        self, digest: str, index: int, data: Buffer, lock: BlockClaim | None, size: int | None
    ) -> None:
        try:
            if await self._store(digest, index, data) and size is not None:
                self._seen(digest, size, index)
        except Exception:
            log.exception("writing block %d of %s to the cache failed", index, digest)
        finally:
            self._write_slots.release()
            if lock is not None:
                lock.release(index)

    async def flush(self) -> None:
        """Wait until every block written behind is on disk, and every verification under
        way has recorded its result (else the next mount would hash the blob again)."""
        await self._written()
        for event in list(self._verifying.values()):
            await event.wait()

    async def _written(self) -> None:
        """Wait until every block written behind is on disk."""
        for _ in range(WRITE_BEHIND):
            await self._write_slots.acquire()
        for _ in range(WRITE_BEHIND):
            self._write_slots.release()

    async def forget(self, digest: str) -> None:
        """Drop every block of ``digest`` from memory and disk (its bytes proved wrong)."""
        self._memory.forget(digest)
        self._present.pop(digest, None)
        await trio.to_thread.run_sync(self.cache.remove_blocks, digest)

    async def _fetch(self, digest: str, size: int, flights: dict[int, _Flight]) -> None:
        """Download reserved blocks, a range request per run of adjacent ones, unless another
        process is downloading them: then wait for it and leave them to be read from disk."""
        try:
            indexes = sorted(flights)
            runs: list[list[int]] = []
            for index in indexes:
                if runs and index == runs[-1][-1] + 1 and len(runs[-1]) < MAX_BLOCKS_PER_REQUEST:
                    runs[-1].append(index)
                else:
                    runs.append([index])
            for run in runs:
                await self._fetch_run(digest, size, run[0], run[-1])
        except BaseException as exc:
            self._land(digest, flights, _for_waiters(exc))
            raise
        finally:
            self._land(digest, flights)  # blocks left out: their readers look again

    async def _fetch_run(self, digest: str, size: int, first: int, last: int) -> None:
        locks = await self._claim(digest, first, last)
        if locks is None:
            return  # another process cached it meanwhile
        unwritten = set(locks.held)
        try:
            blocks = await self._download(digest, size, first, max(unwritten))
            for index, block in enumerate(blocks, first):
                self.stats.downloaded_blocks += 1
                if (flight := self._flights.get((digest, index))) is not None:
                    flight.data = block
                await self.put_block(digest, index, block, lock=locks, size=size)
                unwritten.discard(index)  # its lock went along, released once on disk
        finally:
            for index in unwritten:
                locks.release(index)

    async def _download(self, digest: str, size: int, first: int, last: int) -> list[Buffer]:
        """Blocks ``first`` to ``last`` from the registry. Of a blob verified before, each is
        checked against its hash, and fetched again when wrong (a glitch of the registry or
        of a proxy), up to ``DOWNLOAD_ATTEMPTS`` times: wrong bytes are never kept."""
        hashes = await self._known_hashes(digest) or []
        start, end = first * self.block_size, min((last + 1) * self.block_size, size)
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            pieces = await self.source.get_range_pieces(
                self.repository, digest, start, end, self.block_size
            )
            blocks = _as_blocks(pieces, self.block_size)
            wrong = [
                index
                for index, block in enumerate(blocks, first)
                if index < len(hashes) and hashlib.sha256(block).hexdigest() != hashes[index]
            ]
            if not wrong:
                return blocks
            log.warning(
                "block %d of blob %s came with bytes that differ from those verified before "
                "(attempt %d of %d)",
                wrong[0],
                digest,
                attempt,
                DOWNLOAD_ATTEMPTS,
            )
        raise DigestMismatch(
            f"block {wrong[0]} of blob {digest} from {self.source.registry} differs from the "
            f"bytes verified before, {DOWNLOAD_ATTEMPTS} times: the registry or a proxy serves "
            "wrong bytes; try again later or report it to the registry owner"
        )

    async def _claim(self, digest: str, first: int, last: int) -> BlockClaim | None:
        """Download locks of block ``first`` and of the absent blocks after it up to ``last``,
        waiting while another process holds the first; None when it turned up in the cache
        meanwhile."""
        delay = 0.005
        while True:
            locks = await trio.to_thread.run_sync(
                self.cache.claim_run, digest, self.block_size, first, last
            )
            if locks is None or locks.held:
                return locks
            await trio.sleep(delay)
            delay = min(delay * 2, LOCK_POLL_MAX)

    async def _store(self, digest: str, index: int, block: Buffer) -> bool:
        """Write a block to the disk cache; False when it could not. A full or read-only disk
        costs speed, never a failed read: the cache warns once and writes are skipped for a
        while, then tried again."""
        if not self.cache.writable:
            return False
        try:
            await trio.to_thread.run_sync(
                self.cache.write_block, digest, self.block_size, index, block
            )
        except OSError as exc:
            self.stats.write_failures += 1
            log.debug("block %d of %s not cached: %s", index, digest, exc)
            if exc.errno == errno.ENOSPC and self.budget is not None:
                await self.budget.prune()
            return False
        if self.budget is not None:
            await self.budget.wrote(len(block) + CHECKSUM)
        return True

    # --- verification -------------------------------------------------------------------------

    def _seen(self, digest: str, size: int, index: int) -> None:
        """Note a cached block; once all of a blob are, verify it in the background."""
        present = self._present.setdefault(digest, set())
        present.add(index)
        if (
            len(present) == self._block_count(size)
            and digest not in self._hashes
            and digest not in self._verifying
            and self.cache.writable
        ):
            trio.lowlevel.spawn_system_task(self._verify_quietly, digest, size)

    async def _verify_quietly(self, digest: str, size: int) -> None:
        try:
            await self.verified(digest, size, fetch=False)
        except ModelKitFSError:
            pass  # logged where it was found; reads of the blob now fail until it verifies
        except Exception:
            log.exception("verifying %s failed unexpectedly", digest)

    async def verified(
        self, digest: str, size: int, *, fetch: bool = True, complete: bool = False
    ) -> None:
        """Make sure ``digest`` hashes to the digest, downloading what is missing (unless
        ``fetch`` is False); raise if it does not. Its per-block hashes are then known, so
        every block downloaded later is checked on its own. With ``complete`` (a prefetch),
        every block must also be in the disk cache when this returns: blocks evicted since are
        fetched again; raises when the cache cannot keep them all. Without it, a blob the
        cache cannot keep whole is hashed as it streams by (``--verify full``)."""
        await self._verified(digest, size, fetch=fetch, stream=not complete)
        if complete:
            await complete_blob(self, digest, size)

    async def _verified(self, digest: str, size: int, *, fetch: bool, stream: bool) -> None:
        if digest in self._hashes and digest not in self._bad:
            return
        if (event := self._verifying.get(digest)) is not None:
            await event.wait()
            if digest in self._bad and not fetch:
                return
            if digest not in self._hashes:
                raise DigestMismatch(self._mismatch(digest))
            return
        self._verifying[digest] = event = trio.Event()
        try:
            if await self._known_hashes(digest) is not None and digest not in self._bad:
                return
            if fetch and not self._can_keep(size):
                if not stream:  # a prefetch: what it fetched would not stay
                    raise cannot_keep(self, digest, size)
                hashes = await hash_streaming(self, digest, size)  # else downloaded twice
            else:
                if fetch:
                    await self._fetch_all(digest, size)
                    await self._written()
                hashes = await trio.to_thread.run_sync(self._hash_blocks, digest, size)
            if hashes is None:
                if not fetch:
                    return  # a block left the cache meanwhile: verify when it is back
                if not stream:
                    raise cannot_keep(self, digest, size)
                hashes = await hash_streaming(self, digest, size)
            whole, per_block = hashes
            if whole != digest:
                self.stats.corrupt_blobs += 1
                self._bad.add(digest)
                self._hashes.pop(digest, None)
                await self.forget(digest)
                log.error("%s", self._mismatch(digest, whole))
                if self.on_corrupt is not None:
                    await self.on_corrupt(digest)
                raise DigestMismatch(self._mismatch(digest, whole))
            self._bad.discard(digest)
            self._hashes[digest] = per_block
            self.stats.verified_blobs += 1
            record = {"size": size, "block_size": self.block_size, "blocks": per_block}
            await self.save_meta(digest, VERIFIED_RECORD, json.dumps(record).encode())
            log.info("verified %s (%d bytes)", digest, size)
        finally:
            del self._verifying[digest]
            event.set()

    def _can_keep(self, size: int) -> bool:
        """Whether the disk cache may hold a blob of ``size`` whole now."""
        if not self.cache.writable:
            return False
        cap = self.budget.max_bytes if self.budget is not None else None
        return cap is None or size <= cap * PRUNE_TO

    def _mismatch(self, digest: str, actual: str | None = None) -> str:
        got = f" (its bytes hash to {actual})" if actual else ""
        return (
            f"blob {digest} from {self.source.registry}/{self.repository} failed verification"
            f"{got}: evicted from the cache; reads of it fail until a new download verifies; "
            "the registry or a proxy served wrong bytes"
        )

    async def _known_hashes(self, digest: str) -> list[str] | None:
        """Per-block hashes of a blob verified before (by any process), if any."""
        if digest not in self._hashes and digest not in self._checked_record:
            self._checked_record.add(digest)
            record = await self.load_meta(digest, VERIFIED_RECORD)
            try:
                document = json.loads(record) if record else None
                if document and document["block_size"] == self.block_size:
                    self._hashes[digest] = [str(h) for h in document["blocks"]]
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable %s of %s", VERIFIED_RECORD, digest)
        return self._hashes.get(digest)

    async def _fetch_all(self, digest: str, size: int) -> None:
        count = self._block_count(size)
        self._bad.discard(digest)  # a fresh download gets its chance

        async def fetch(first: int) -> None:
            last = min(first + MAX_BLOCKS_PER_REQUEST, count) - 1
            for index in range(first, last + 1):
                await self._block(digest, size, index, last)

        async with trio.open_nursery() as nursery:
            for first in range(0, count, MAX_BLOCKS_PER_REQUEST):
                nursery.start_soon(fetch, first)

    def _hash_blocks(self, digest: str, size: int) -> tuple[str, list[str]] | None:
        """The blob's digest and per-block sha256 from the disk cache; None if a block is
        missing. Runs in a worker thread."""
        whole = hashlib.sha256()
        per_block = []
        for index in range(self._block_count(size)):
            block = self.cache.read_block(
                digest, self.block_size, index, self._block_len(size, index)
            )
            if block is None:
                return None
            whole.update(block)
            per_block.append(hashlib.sha256(block).hexdigest())
        return f"sha256:{whole.hexdigest()}", per_block

    async def load_meta(self, digest: str, name: str) -> bytes | None:
        return await trio.to_thread.run_sync(self.cache.read_meta, digest, name)

    async def save_meta(self, digest: str, name: str, data: bytes) -> None:
        try:
            await trio.to_thread.run_sync(self.cache.write_meta, digest, name, data)
        except OSError as exc:  # the cache warned once: it cannot be written
            log.debug("could not save %s for %s in the cache: %s", name, digest, exc)


def _for_waiters(exc: BaseException) -> BaseException | None:
    """What readers waiting on a failed flight are told: its error, but not the cancellation
    of the task that flew it (an index walk's fetching ahead, say): they look again."""
    return None if isinstance(exc, trio.Cancelled) else exc


def _as_blocks(pieces: Sequence[Buffer], block_size: int) -> list[Buffer]:
    """The pieces of a range as blocks: as they are when cut at block boundaries (the rule),
    else joined and cut again (after a transfer resumed in the middle of a block)."""
    if not pieces or (
        all(len(p) == block_size for p in pieces[:-1]) and len(pieces[-1]) <= block_size
    ):
        return list(pieces)
    with memoryview(b"".join(pieces)) as whole:
        return [bytes(whole[i : i + block_size]) for i in range(0, len(whole), block_size)]


def _join(blocks: list[Buffer], start: int, length: int) -> bytes:
    """``length`` bytes from ``start`` in the blocks laid end to end, copied once."""
    views, skip, left = [], start, length
    for block in blocks:
        view = memoryview(block)[skip : skip + left]
        skip = max(0, skip - len(block))
        left -= len(view)
        views.append(view)
    return b"".join(views)


class Blob:
    """One blob of known digest and size: what the archive layer reads from."""

    def __init__(self, store: BlobStore, digest: str, size: int) -> None:
        self.store = store
        self.digest = digest
        self.size = size

    @property
    def cached(self) -> bool:
        """Whether its reads land in the shared disk cache (not so for a kit's local blobs)."""
        return not self.store.source.in_place

    @property
    def verify_full(self) -> bool:
        """Whether no byte of it may be served before the whole blob is verified."""
        return self.store.verify_full

    async def read(
        self,
        offset: int,
        length: int,
        *,
        ahead: bool = True,
        ahead_limit: int | None = None,
        unit_end: int | None = None,
    ) -> bytes:
        return await self.store.read(
            self.digest,
            self.size,
            offset,
            length,
            ahead=ahead,
            ahead_limit=ahead_limit,
            unit_end=unit_end,
        )

    async def cached_bytes(self, start: int = 0, end: int | None = None) -> int:
        return await self.store.cached_bytes(self.digest, self.size, start, end)

    async def fetch_verified(self) -> None:
        """Bring the whole blob into the cache and verify it (kit's local blobs need not)."""
        if not self.store.source.in_place:
            await self.store.verified(self.digest, self.size, complete=True)

    async def read_sparse(self, offset: int, length: int) -> bytes:
        """For small scattered reads such as tar headers. A small blob goes through the cache
        (one request serves it all); in a larger one a whole block per header would cost far
        more than the bytes needed, so the read goes straight to the registry."""
        if self.size <= SMALL_BLOB or self.store.must_verify(self.digest):
            return await self.read(offset, length)
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        return bytes(
            await self.store.source.get_range(self.store.repository, self.digest, offset, end)
        )

    async def stream(self, chunk_size: int = STREAM_CHUNK) -> AsyncIterator[bytes]:
        """The whole blob in order, for a consumer that keeps what it derives rather than the
        blob itself: chunks come straight from the registry and are not cached."""
        for start in range(0, self.size, chunk_size):
            end = min(start + chunk_size, self.size)
            yield await self.store.source.get_range(self.store.repository, self.digest, start, end)

    def derived(self, key: str) -> DerivedBlob:
        """Storage in the shared cache for bytes computed from this blob, under ``key``."""
        return DerivedBlob(self.store, key)

    async def load_meta(self, name: str) -> bytes | None:
        return await self.store.load_meta(self.digest, name)

    async def save_meta(self, name: str, data: bytes) -> None:
        await self.store.save_meta(self.digest, name, data)


class DerivedBlob:
    """Bytes this machine computes from a blob, such as a decompressed layer, cached in blocks
    under their own digest so that every mount on the machine reuses them. The producer writes
    blocks in order and calls :meth:`finish` once it has verified the whole; until then other
    processes do not trust them."""

    def __init__(self, store: BlobStore, key: str) -> None:
        self.store = store
        self.key = key

    @property
    def block_size(self) -> int:
        return self.store.block_size

    async def finished_size(self) -> int | None:
        """The size recorded by :meth:`finish`, or None when the bytes are not complete."""
        record = await self.store.load_meta(self.key, DERIVED_RECORD)
        try:
            document = json.loads(record) if record is not None else None
            if document and document["block_size"] == self.block_size:
                return int(document["size"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable %s of %s", DERIVED_RECORD, self.key)
        return None

    async def write_block(self, index: int, data: bytes) -> None:
        # Not behind: a reader may need it from disk once it leaves memory, before finish().
        await self.store.put_block(self.key, index, data, behind=False)

    async def read(self, offset: int, length: int, end: int) -> bytes | None:
        """Bytes ``[offset, offset + length)``, knowing the first ``end`` bytes exist; None when
        a block is missing (evicted from the disk cache, say)."""
        stop = min(offset + length, end)
        if offset >= stop:
            return b""
        size = self.block_size
        blocks = []
        for i in range(offset // size, (stop - 1) // size + 1):
            block = await self.store.cached_block(self.key, i, min(size, end - i * size))
            if block is None:
                return None
            blocks.append(block)
        start = offset - offset // size * size
        return b"".join(blocks)[start : start + stop - offset]

    async def finish(self, size: int) -> None:
        record = json.dumps({"size": size, "block_size": self.block_size}).encode()
        await self.store.save_meta(self.key, DERIVED_RECORD, record)

    async def discard(self) -> None:
        await self.store.forget(self.key)
