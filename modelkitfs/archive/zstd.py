"""A zstd layer, decompressed once as a stream into the shared cache.

zstd as kit writes it (one frame, no seek table) cannot be entered in the middle, so the layer is
decompressed from the start exactly once on the machine. Its output goes into the cache in
blocks keyed by the layer's diffId (the digest of the uncompressed bytes, from the config),
checked against that digest at the end, and shared by every later mount. A read waits only
until the stream has passed the bytes it asks for.
"""

from __future__ import annotations

import hashlib
import logging

import trio
import zstandard

from modelkitfs.archive.stream import LayerStream
from modelkitfs.blobs import NO_READAHEAD, Blob, DerivedBlob, ReadHint
from modelkitfs.errors import ArchiveError, DigestMismatch
from modelkitfs.primitives.digests import is_sha256

log = logging.getLogger(__name__)


def decoded_key(blob: Blob, diff_id: str | None) -> str:
    """Where the decompressed bytes live in the cache: under the diffId when the config gives
    it, else under the compressed digest marked as derived."""
    if diff_id and is_sha256(diff_id):
        return diff_id
    algorithm, _, hexpart = blob.digest.partition(":")
    return f"{algorithm}+zstd:{hexpart}"


class ZstdStream(LayerStream):
    """The uncompressed bytes of a zstd blob, read from their decompressed copy in the cache
    (its own blocks, under its own key): no block of the blob, no readahead hints."""

    def __init__(self, blob: Blob, diff_id: str | None) -> None:
        super().__init__(blob)
        self.diff_id = diff_id if diff_id and is_sha256(diff_id) else None
        self.decoded: DerivedBlob = blob.derived(decoded_key(blob, diff_id))
        self._finished: int | None = None
        self._produced = 0
        self._progress = trio.Event()
        self._running = False
        self._looked_in_cache = False
        self._failure: BaseException | None = None
        self._lock = trio.Lock()

    async def prepare(self) -> None:
        """Wait until the whole layer is decompressed (the tar walker needs its size)."""
        await self._wait_for(None)
        assert self._finished is not None
        self.size = self._finished

    async def prefetch(self) -> None:
        """Decompress the whole layer into the cache: its decompressed copy is what reads
        come from, not the compressed blob, which is not kept."""
        await self.prepare()

    async def read(self, offset: int, length: int, hint: ReadHint = NO_READAHEAD) -> bytes:
        # With full verification nothing is served before the whole layer checked out.
        target = None if self.blob.verify_full else offset + length
        while True:
            end = await self._wait_for(target)
            data = await self.decoded.read(offset, length, end)
            if data is not None:
                return data
            async with self._lock:
                if not self._running:
                    log.warning("decompressed %s left the cache; decompressing again", self.digest)
                    self._start()

    async def _wait_for(self, target: int | None) -> int:
        """Wait until byte ``target`` (the end when None) is decompressed; returns how many
        bytes are known to be there."""
        async with self._lock:
            if not self._looked_in_cache:
                self._looked_in_cache = True
                self._finished = await self.decoded.finished_size()
            corrupt = isinstance(self._failure, (ArchiveError, DigestMismatch))
            if self._finished is None and not self._running and not corrupt:
                self._start()  # the first time, or again after a pass that failed midway
        while True:
            if self._finished is not None:
                return self._finished
            if self._failure is not None:
                raise self._failure
            if target is not None and self._produced >= target:
                return self._produced
            await self._progress.wait()

    def _start(self) -> None:
        self._running = True
        self._finished = None
        self._failure = None
        self._produced = 0
        self.blob.in_background(self._produce)

    def _advance(self, produced: int) -> None:
        self._produced = produced
        self._progress.set()
        self._progress = trio.Event()

    async def _produce(self) -> None:
        log.info("decompressing zstd layer %s into the cache", self.digest)
        block_size = self.decoded.block_size
        decompressor = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        sha = hashlib.sha256()
        compressed = hashlib.sha256()
        pending = bytearray()
        produced = index = 0
        try:
            async for chunk in self.blob.stream():
                output = await trio.to_thread.run_sync(
                    _decompress, decompressor, sha, compressed, chunk
                )
                pending += output
                while len(pending) >= block_size:
                    await self.decoded.write_block(index, bytes(pending[:block_size]))
                    del pending[:block_size]
                    index += 1
                    produced += block_size
                    self._advance(produced)
            if pending:
                await self.decoded.write_block(index, bytes(pending))
                produced += len(pending)
            if f"sha256:{compressed.hexdigest()}" != self.digest:
                await self.decoded.discard()
                raise DigestMismatch(
                    f"layer {self.digest} arrived as sha256:{compressed.hexdigest()}: the registry "
                    "or a proxy served wrong bytes; try again or report it to the registry owner"
                )
            if self.diff_id and f"sha256:{sha.hexdigest()}" != self.diff_id:
                await self.decoded.discard()
                raise DigestMismatch(
                    f"layer {self.digest} decompresses to sha256:{sha.hexdigest()}, not its "
                    f"diffId {self.diff_id}: the artifact is corrupt; push it again"
                )
            await self.decoded.finish(produced)
            self._finished = produced
            log.info("decompressed %s: %d bytes", self.digest, produced)
        except zstandard.ZstdError as exc:
            self._failure = ArchiveError(
                f"layer {self.digest} is not a valid zstd stream ({exc}): the artifact is "
                "corrupt; push it again"
            )
        except DigestMismatch as exc:
            self._failure = exc
        except Exception as exc:
            log.error("decompressing %s failed: %s", self.digest, exc)
            self._failure = exc
        finally:
            self._running = False
            self._advance(produced)


def _decompress(
    decompressor: zstandard.ZstdDecompressionObj,
    sha: hashlib._Hash,
    compressed: hashlib._Hash,
    chunk: bytes,
) -> bytes:
    compressed.update(chunk)
    output = decompressor.decompress(chunk)
    sha.update(output)
    return output
