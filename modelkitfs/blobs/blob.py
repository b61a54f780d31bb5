"""What the archive layer reads from: a blob of known digest and size (:class:`Blob`), and
bytes computed from one, cached in blocks of their own (:class:`DerivedBlob`).

Both are thin facades over the :class:`~modelkitfs.blobs.store.BlockStore` of the blob's
repository, calling its methods only: the archive layer needs byte ranges, a few whole-blob
operations (prefetch, a stream for decompressing) and sidecar files, never the store's
machinery. :class:`BlobStore` is that store handing them out (the facades sit above the store:
it does not import them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from modelkitfs.blobs.readahead import READ_AHEAD, ReadHint
from modelkitfs.blobs.store import BlockStore
from modelkitfs.errors import RangeIgnored
from modelkitfs.primitives.buffers import Buffer

log = logging.getLogger(__name__)

SMALL_BLOB = 1024 * 1024
STREAM_CHUNK = 8 * 1024 * 1024
DERIVED_RECORD = "derived.v1.json"


@dataclass(eq=False)
class Blob:
    """One blob of known digest and size: what the archive layer reads from."""

    store: BlobStore
    digest: str
    size: int

    @property
    def block_size(self) -> int:
        """The size of the blocks its bytes are cached in."""
        return self.store.block_size

    @property
    def cached(self) -> bool:
        """Whether its reads land in the shared disk cache (not so for a kit's local blobs)."""
        return not self.store.in_place

    def in_background(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` behind the readers, in the session's nursery (a zstd layer's
        decompression, say): stopped when the session ends, like fetching ahead."""
        self.store.in_background(work)

    @property
    def verify_full(self) -> bool:
        """Whether no byte of it may be served before the whole blob is verified."""
        return self.store.verify_full

    async def read(self, offset: int, length: int, hint: ReadHint = READ_AHEAD) -> bytes:
        """Bytes ``[offset, offset + length)``, fetched ahead of as ``hint`` says."""
        return await self.store.read(self.digest, self.size, offset, length, hint)

    def read_now(self, offset: int, length: int, hint: ReadHint = READ_AHEAD) -> bytes | None:
        """What :meth:`read` answers, if it can be had without waiting; else None."""
        return self.store.read_now(self.digest, self.size, offset, length, hint)

    async def read_held(self, offset: int, length: int) -> bytes | None:
        """What :meth:`read` answers if it needs nothing fetched (see the store's)."""
        return await self.store.read_held(self.digest, self.size, offset, length)

    async def cached_bytes(self, start: int = 0, end: int | None = None) -> int:
        return await self.store.cached_bytes(self.digest, self.size, start, end)

    async def fetch_verified(self) -> None:
        """Bring the whole blob into the cache and verify it (kit's local blobs need not)."""
        if not self.store.in_place:
            await self.store.verify_complete(self.digest, self.size)

    async def read_sparse(self, offset: int, length: int) -> bytes:
        """For small scattered reads such as tar headers. A small blob goes through the cache
        (one request serves it all); in a larger one a whole block per header would cost far
        more than the bytes needed, so the read goes straight to the registry."""
        store = self.store
        if self.size <= SMALL_BLOB or store.must_verify(self.digest):
            return await self.read(offset, length)
        if store.ignores_range:
            return await self.read(offset, length)  # a header would cost the blob up to it
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        try:
            return bytes(await store.read_source(self.digest, offset, end))
        except RangeIgnored:
            return await self.read(offset, length)  # the blob in order, once, then this

    async def stream(self, chunk_size: int = STREAM_CHUNK) -> AsyncIterator[bytes]:
        """The whole blob in order, for a consumer that keeps what it derives rather than the
        blob itself: chunks come straight from the registry and are not cached."""
        store = self.store
        for start in range(0, self.size, chunk_size):
            end = min(start + chunk_size, self.size)
            try:
                yield await store.read_source(self.digest, start, end)
            except RangeIgnored:  # the server's whole answer is kept open at the start now
                yield await store.read_source(self.digest, start, end)

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
        await self.store.write_now(self.key, index, data)

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


class BlobStore(BlockStore):
    """Serves byte ranges of the blobs of one repository of a source, through a block cache
    (:class:`~modelkitfs.blobs.store.BlockStore`), and hands out their facades."""

    def blob(self, digest: str, size: int) -> Blob:
        return Blob(self, digest, size)

    # --- what the facades ask of their store ------------------------------------------------

    @property
    def in_place(self) -> bool:
        return self.source.in_place

    @property
    def ignores_range(self) -> bool:
        return bool(self.source.ignores_range)

    @property
    def verify_full(self) -> bool:
        return self.verifier.full

    def must_verify(self, digest: str) -> bool:
        return self.verifier.must_verify(digest)

    async def verify_complete(self, digest: str, size: int) -> None:
        """Bring the whole blob into the cache and verify it."""
        await self.verifier.verified(digest, size, complete=True)

    def in_background(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` behind the readers, stopped with fetching ahead."""
        self.background.start(work)

    async def write_now(self, digest: str, index: int, data: Buffer) -> None:
        await self.writes.put_now(digest, index, data)
