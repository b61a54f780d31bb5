"""Keeping the shared cache within its size cap and the disk above its free-space floor, in
the one way blocks are written to it (:class:`CacheWrites`).

The cap belongs to the cache folder, not to a process: it is recorded in ``cache.json`` there,
and every process on the folder uses that one (read again before each eviction), so a mount
with a smaller ``--cache-max-size`` cannot evict what another one is using. A cap asked for is
recorded when none is, or when it raises the recorded one; it lowers it only while no other
process uses the cache (else a warning says the recorded cap is kept). A cap below
``MIN_MAX_BYTES`` is refused: it would evict blocks as fast as they are written.

Every process that writes blocks counts what it writes on top of what the cache held when it
started; past the cap, or when the disk runs low, it evicts the least recently used blocks that
no process has in use (one process at a time; the count is then taken again from the disk).
It does so in the write itself (:meth:`CacheWrites.write_block`), as Mountpoint-s3's disk cache
enforces its limit in ``put_block``: the read engine writes blocks and asks whether a blob fits
(:meth:`CacheWrites.keeps`), and never sees the cap, the count or eviction.
"""

from __future__ import annotations

import errno
import logging
import re

import trio

from modelkitfs.cache.blockfile import CHECKSUM
from modelkitfs.cache.disk import DiskCache
from modelkitfs.cache.eviction import PRUNE_TO
from modelkitfs.cache.protocol import BlockCache
from modelkitfs.errors import ModelKitFSError
from modelkitfs.primitives.buffers import Buffer

log = logging.getLogger(__name__)

MIN_MAX_BYTES = 64 * 1024 * 1024  # a cap below this would evict blocks as they are written
MIN_FREE_FRACTION = 0.05
DEFAULT_MAX_FRACTION = 0.5  # of the file system the cache is on
FREE_CHECK_EVERY = 64 * 1024 * 1024  # bytes written between looks at the free space
PRUNE_ROUNDS = 3  # writes go on while a prune runs: look again, a few times at most
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``500M``, ``20G``, ``1.5T``, ``4096`` (bytes); K, M, G, T are powers of 1024."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ModelKitFSError(
            f"invalid size {text!r}: give a number with an optional K, M, G or T suffix (e.g. 20G)"
        )
    scale = 1024 ** " KMGT".index(match[2].upper() or " ")
    return int(float(match[1]) * scale)


def check_max_size(text: str) -> int:
    """``--cache-max-size``: the bytes it names, or an error when below the minimum."""
    size = parse_size(text)
    if size < MIN_MAX_BYTES:
        raise ModelKitFSError(
            f"--cache-max-size {text} is below the minimum of {_mib(MIN_MAX_BYTES)}: a cache "
            "that small would evict blocks as fast as they are written, also those other "
            "mounts use; give at least 64M"
        )
    return size


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


def settle_cap(cache: DiskCache, requested: int | None) -> tuple[int | None, str | None]:
    """The size cap every process on ``cache`` uses (None: the default, half the file
    system) once ``requested`` is taken into account, and a warning when it is not the one
    asked for. Blocks: run in a worker thread."""
    recorded = cache.read_config().get("max_size")
    if requested is None or requested == recorded:
        return recorded, None
    if recorded is not None and requested < recorded and (others := cache.other_processes()):
        return recorded, (
            f"cache {cache.root} keeps its size cap of {_mib(recorded)} (recorded there for "
            f"every mount on it), not --cache-max-size {_mib(requested)}: {len(others)} other "
            "process(es) use it now and a lower cap would evict their blocks; lower it once "
            "they are done"
        )
    try:
        cache.write_config({**cache.read_config(), "max_size": requested})
    except OSError:
        pass  # warned about once by the cache; nothing is written to it anyway
    else:
        log.info("cache %s: size cap set to %d bytes for every process", cache.root, requested)
    return requested, None


class CacheWrites:
    """Blocks written to ``cache`` as the read engine writes them: off the event loop, and
    only as far as the cache may hold them. Without a cap (a memory cache, a test's) they go
    straight through; :class:`CacheBudget` counts them against the cache folder's cap."""

    max_bytes: int | None = None  # the cap, when there is one

    def __init__(self, cache: BlockCache) -> None:
        self.cache = cache

    @property
    def writable(self) -> bool:
        """False while writes would fail (see :attr:`BlockCache.writable`): skip them."""
        return self.cache.writable

    async def write_block(self, digest: str, block_size: int, index: int, data: Buffer) -> None:
        """Write a block, counted against the cap (evicting past it, or when the disk turns
        out full). Raises OSError when the cache cannot be written (warned about once)."""
        try:
            await trio.to_thread.run_sync(self.cache.write_block, digest, block_size, index, data)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                await self.prune()
            raise
        await self.wrote(len(data) + CHECKSUM)

    async def wrote(self, nbytes: int) -> None:
        """Account for ``nbytes`` just written."""

    async def prune(self) -> None:
        """Evict what the cap or the disk's free space asks for."""

    def keeps(self, size: int) -> bool:
        """Whether the cache may hold a blob of ``size`` bytes whole now."""
        if not self.cache.writable:
            return False
        return self.max_bytes is None or size <= self.max_bytes * PRUNE_TO

    def cannot_keep(self, digest: str, size: int) -> ModelKitFSError:
        """The error of a blob the cache cannot hold whole: why, and what to do."""
        if (unwritable := self.cache.cannot_write()) is not None:
            why = unwritable
        else:
            cap = self.max_bytes
            shown = f"{cap / 2**20:.0f} MiB" if cap else "its size"
            why = (
                f"its size cap ({shown}, the cache's own, shared by every mount on it) leaves "
                "too little room beside the blocks in use; raise it with --cache-max-size, "
                "select less with --filter, or choose a larger cache with --cache-dir"
            )
        return ModelKitFSError(
            f"cache {self.cache.name} could not keep all of blob {digest} ({size} bytes): {why}"
        )


class CacheBudget(CacheWrites):
    """The size cap and free-space floor of one cache directory, shared by the stores of a
    process. ``max_bytes`` is the cap asked for (None: the one recorded in the cache, else half
    of the file system); :meth:`start` settles it with the cache's record."""

    def __init__(self, cache: DiskCache, max_bytes: int | None = None) -> None:
        super().__init__(cache)
        self.cache: DiskCache = cache
        self.requested = max_bytes
        self.max_bytes = max_bytes
        self.min_free_bytes = 0
        self.usage: int | None = None  # None until start() has measured the cache
        self._unmeasured = 0
        self._written = 0  # in all, to tell what was written while a prune ran
        self.prunes = 0  # evictions run, and about how much they took (for the metrics)
        self.evicted_bytes = 0
        self._since_free_check = 0
        self._pruning = trio.Lock()
        # After a prune that blocks in use kept above the cap: no new one before the cache
        # has grown by a tenth of the cap (each prune walks the whole cache).
        self._prune_again_at = 0

    async def start(self) -> None:
        """Take the cache's size from the disk (once, off the event loop). Meant to run in
        the background: a failure leaves the cache unbounded, with a warning."""
        try:
            await self._measure()
        except OSError as exc:
            log.warning("cannot measure cache %s (%s): not bounding it", self.cache.root, exc)

    async def _measure(self) -> None:
        await trio.to_thread.run_sync(self.cache.register)
        cap, warning = await trio.to_thread.run_sync(settle_cap, self.cache, self.requested)
        if warning:
            log.warning("%s", warning)
        free, total = await trio.to_thread.run_sync(self.cache.free_bytes)
        self.max_bytes = cap if cap is not None else int(total * DEFAULT_MAX_FRACTION)
        self.min_free_bytes = int(total * MIN_FREE_FRACTION)
        self.usage = await trio.to_thread.run_sync(self.cache.usage) + self._unmeasured
        log.info(
            "cache %s holds %d bytes (cap %d, keeping %d of %d free)",
            self.cache.root,
            self.usage,
            self.max_bytes,
            self.min_free_bytes,
            free,
        )
        if self.usage > self.max_bytes or free < self.min_free_bytes:
            await self.prune()

    async def wrote(self, nbytes: int) -> None:
        """Account for ``nbytes`` just written; evict when over the cap or the floor."""
        if self.usage is None or self.max_bytes is None:
            self._unmeasured += nbytes  # start() is still measuring
            return
        self.usage += nbytes
        self._written += nbytes
        self._since_free_check += nbytes
        if self.usage > self.max_bytes:
            if self.usage >= self._prune_again_at:
                await self.prune()
        elif self._since_free_check >= FREE_CHECK_EVERY:
            self._since_free_check = 0
            free, _ = await trio.to_thread.run_sync(self.cache.free_bytes)
            if free < self.min_free_bytes:
                await self.prune()

    async def finish(self) -> None:
        """Once this process holds nothing in use any more (its pins are gone): evict what
        its pins kept above the cap, so a cache is within its cap when its mounts are done."""
        self._prune_again_at = 0
        if self.usage is not None and self.max_bytes is not None and self.usage > self.max_bytes:
            await self.prune()

    async def prune(self) -> None:
        if self._pruning.locked():
            return  # one eviction at a time; it looks again if writes went on meanwhile
        async with self._pruning:
            recorded = await trio.to_thread.run_sync(self.cache.read_config)
            if recorded.get("max_size"):  # another process may have raised it since
                self.max_bytes = recorded["max_size"]
            for _ in range(PRUNE_ROUNDS):
                written_before, usage_before = self._written, self.usage
                pruned = await trio.to_thread.run_sync(
                    self.cache.prune, self.max_bytes, self.min_free_bytes
                )
                self.prunes += 1
                self.evicted_bytes += max(0, (usage_before or 0) - pruned)
                self.usage = pruned + self._written - written_before
                if self.max_bytes is None or self.usage <= self.max_bytes:
                    self._prune_again_at = 0
                    return
                if usage_before is not None and self.usage >= usage_before:
                    break  # nothing could go: the rest is in use
            if self.usage is not None and self.max_bytes is not None:
                self._prune_again_at = self.usage + max(self.max_bytes // 10, 1)
