"""Random access to layer blobs, one fixed-size block at a time.

A read is served from, in order: a small in-memory LRU of recent blocks, the shared disk cache,
and the registry. Blocks missing side by side are fetched with one range request. Within this
process each block is downloaded once, however many readers want it at the same moment
(single flight); the others wait for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import cachetools
import trio

from modelkitfs.blobs.cache import DiskCache
from modelkitfs.registry import LayoutSource, Manifest, RegistryClient
from modelkitfs.registry.client import sha256_digest

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 1024 * 1024
MAX_BLOCKS_PER_REQUEST = 16
MEMORY_CACHE_BYTES = 64 * 1024 * 1024
SMALL_BLOB = 1024 * 1024
STREAM_CHUNK = 8 * 1024 * 1024
WHOLE_BLOB = "blob"
DERIVED_RECORD = "derived.v1.json"


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    downloaded_blocks: int = 0
    write_failures: int = 0


@dataclass
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


class BlobStore:
    """Serves byte ranges of the blobs of one repository."""

    def __init__(
        self,
        client: RegistryClient | LayoutSource,
        repository: str,
        cache: DiskCache,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        memory_bytes: int = MEMORY_CACHE_BYTES,
    ) -> None:
        self.client = client
        self.repository = repository
        self.cache = cache
        self.block_size = block_size
        self.stats = CacheStats()
        self._memory: cachetools.LRUCache[tuple[str, int], bytes] = cachetools.LRUCache(
            maxsize=memory_bytes, getsizeof=len
        )
        self._flights: dict[tuple[str, int], _Flight] = {}
        self._cache_writable = True
        # Blobs already on the machine (kit's storage) are read in place, never copied.
        self.local = isinstance(client, LayoutSource)

    async def manifest(self, identifier: str) -> Manifest:
        """The repository's manifest for a tag or digest (never cached: tags move)."""
        return await self.client.get_manifest(self.repository, identifier)

    async def small_blob(self, digest: str, size: int) -> bytes:
        """A whole small blob, such as a config: from the cache when a mount has fetched it
        before (checked against its digest again), else fetched, verified and cached."""
        if self.local:
            return await self.client.get_blob(self.repository, digest, size)
        cached = await self.load_meta(digest, WHOLE_BLOB)
        if cached is not None and len(cached) == size and sha256_digest(cached) == digest:
            return cached
        data = await self.client.get_blob(self.repository, digest, size)
        await self.save_meta(digest, WHOLE_BLOB, data)
        return data

    def blob(self, digest: str, size: int) -> Blob:
        return Blob(self, digest, size)

    async def read(self, digest: str, size: int, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the blob, clipped at its end."""
        end = min(offset + length, size)
        if offset >= end:
            return b""
        if self.local:
            return await self.client.get_range(self.repository, digest, offset, end)
        first, last = offset // self.block_size, (end - 1) // self.block_size
        blocks = [await self._block(digest, size, i, last) for i in range(first, last + 1)]
        data = b"".join(blocks) if len(blocks) > 1 else blocks[0]
        start = offset - first * self.block_size
        return data[start : start + end - offset]

    def _block_len(self, size: int, index: int) -> int:
        return min(self.block_size, size - index * self.block_size)

    async def _block(self, digest: str, size: int, index: int, wanted_last: int) -> bytes:
        key = (digest, index)
        while True:
            if (flight := self._flights.get(key)) is not None:
                await flight.done.wait()
                if flight.error is not None:
                    raise flight.error
                continue
            data = await self.cached_block(digest, index, self._block_len(size, index))
            if data is not None:
                return data
            if key in self._flights or key in self._memory:
                continue  # someone else started (or finished) it while we looked on disk
            await self._download(digest, size, index, wanted_last)

    async def cached_block(self, digest: str, index: int, expected_size: int) -> bytes | None:
        """Block ``index`` of ``digest`` from memory or the disk cache, or None."""
        key = (digest, index)
        if (data := self._memory.get(key)) is not None:
            self.stats.memory_hits += 1
            return data
        data = await trio.to_thread.run_sync(
            self.cache.read_block, digest, self.block_size, index, expected_size
        )
        if data is not None:
            self.stats.disk_hits += 1
            self._memory[key] = data
        return data

    async def put_block(self, digest: str, index: int, data: bytes) -> None:
        """Keep a block in memory and, if it can, on disk."""
        self._memory[(digest, index)] = data
        await self._store(digest, index, data)

    async def forget(self, digest: str) -> None:
        """Drop every block of ``digest`` from memory and disk (its bytes proved wrong)."""
        for key in [k for k in self._memory if k[0] == digest]:
            self._memory.pop(key, None)
        await trio.to_thread.run_sync(self.cache.remove_blocks, digest)

    async def _download(self, digest: str, size: int, first: int, wanted_last: int) -> None:
        """Fetch block ``first`` and the absent blocks right after it that this read also needs."""
        last = first
        while (
            last < wanted_last
            and last - first + 1 < MAX_BLOCKS_PER_REQUEST
            and (digest, last + 1) not in self._flights
            and (digest, last + 1) not in self._memory
        ):
            last += 1
        keys = [(digest, i) for i in range(first, last + 1)]
        flights = {key: _Flight() for key in keys}
        self._flights.update(flights)
        try:
            start = first * self.block_size
            end = min((last + 1) * self.block_size, size)
            data = await self.client.get_range(self.repository, digest, start, end)
            for i in range(len(keys)):
                self.stats.downloaded_blocks += 1
                await self.put_block(
                    digest, first + i, data[i * self.block_size : (i + 1) * self.block_size]
                )
        except BaseException as exc:
            for flight in flights.values():
                flight.error = exc
            raise
        finally:
            for key, flight in flights.items():
                self._flights.pop(key, None)
                flight.done.set()

    async def _store(self, digest: str, index: int, block: bytes) -> None:
        if not self._cache_writable:
            return
        try:
            await trio.to_thread.run_sync(
                self.cache.write_block, digest, self.block_size, index, block
            )
        except OSError as exc:
            # A full or read-only disk costs speed, never a failed read.
            self.stats.write_failures += 1
            self._cache_writable = False
            log.warning(
                "cache %s is not writable (%s): serving reads uncached", self.cache.root, exc
            )

    async def load_meta(self, digest: str, name: str) -> bytes | None:
        return await trio.to_thread.run_sync(self.cache.read_meta, digest, name)

    async def save_meta(self, digest: str, name: str, data: bytes) -> None:
        try:
            await trio.to_thread.run_sync(self.cache.write_meta, digest, name, data)
        except OSError as exc:
            log.warning("could not save %s for %s in the cache: %s", name, digest, exc)


class Blob:
    """One blob of known digest and size: what the archive layer reads from."""

    def __init__(self, store: BlobStore, digest: str, size: int) -> None:
        self.store = store
        self.digest = digest
        self.size = size

    async def read(self, offset: int, length: int) -> bytes:
        return await self.store.read(self.digest, self.size, offset, length)

    async def read_sparse(self, offset: int, length: int) -> bytes:
        """For small scattered reads such as tar headers. A small blob goes through the cache
        (one request serves it all); in a larger one a whole block per header would cost far
        more than the bytes needed, so the read goes straight to the registry."""
        if self.size <= SMALL_BLOB:
            return await self.read(offset, length)
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        return await self.store.client.get_range(self.store.repository, self.digest, offset, end)

    async def stream(self, chunk_size: int = STREAM_CHUNK) -> AsyncIterator[bytes]:
        """The whole blob in order, for a consumer that keeps what it derives rather than the
        blob itself: chunks come straight from the registry and are not cached."""
        for start in range(0, self.size, chunk_size):
            end = min(start + chunk_size, self.size)
            yield await self.store.client.get_range(self.store.repository, self.digest, start, end)

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
        await self.store.put_block(self.key, index, data)

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
