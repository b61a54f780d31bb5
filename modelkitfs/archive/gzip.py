"""Random access into a gzip layer through a checkpoint index.

gzip cannot be entered in the middle: decompression needs the 32 KiB of output before the point.
So the first time a layer is touched, one streaming pass records checkpoints (compressed offset,
bit offset and window) every few MiB of output; rapidgzip does the inflating and the index
(zran style, in C++, with the GIL released). The index is saved in the shared cache under the
layer digest, so no later mount on the machine pays that pass again. After that a read starts at
the checkpoint before it and fetches only the compressed span that covers it.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import cachetools
import rapidgzip
import trio

from modelkitfs.archive.stream import LayerStream
from modelkitfs.blobs import NO_READAHEAD, Blob, ReadHint
from modelkitfs.errors import ArchiveError, ModelKitFSError

log = logging.getLogger(__name__)

GZIP_INDEX = "gzip-index.v1"
PASS_CHUNK = 4 * 1024 * 1024
DECODED_CHUNK = 1024 * 1024
DECODED_CHUNKS_KEPT = 8
PARALLELIZATION = max(1, min(4, os.cpu_count() or 1))


class _BlobFile(io.RawIOBase):
    """A read-only file over a blob for rapidgzip, which calls it from worker threads: each
    read hops back into the trio loop that owns the blob store."""

    def __init__(self, blob: Blob, token: trio.lowlevel.TrioToken) -> None:
        self.blob = blob
        self.token = token
        self.position = 0
        self.failure: BaseException | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.blob.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            # No readahead: rapidgzip fetches ahead itself, and a random read must cost
            # only the compressed span that covers it.
            data = trio.from_thread.run(
                partial(self.blob.read, self.position, len(view), NO_READAHEAD),
                trio_token=self.token,
            )
        except BaseException as exc:
            self.failure = exc  # rapidgzip reports its own error; keep ours to re-raise
            raise
        view[: len(data)] = data
        self.position += len(data)
        return len(data)


class GzipStream(LayerStream):
    """The uncompressed bytes of a gzip blob, readable at any offset once :meth:`prepare` has
    loaded or built the checkpoint index. A few decoded chunks are kept, not cached (windows
    fetched in parallel would be lost): no block, no bytes held, no readahead hints."""

    def __init__(self, blob: Blob) -> None:
        super().__init__(blob)
        self._handle: Any = None
        self._file: _BlobFile | None = None
        self._lock = trio.Lock()
        self._chunks: cachetools.LRUCache[int, bytes] = cachetools.LRUCache(DECODED_CHUNKS_KEPT)

    async def prepare(self) -> None:
        async with self._lock:
            if self._handle is not None:
                return
            saved = await self.blob.load_meta(GZIP_INDEX)
            if saved is not None:
                try:
                    await self._open(saved)
                    return
                except ArchiveError as exc:
                    log.warning("rebuilding the gzip index of %s: %s", self.digest, exc)
            log.info("building the gzip index of %s (one pass over the layer)", self.digest)
            exported = await self._open(None)
            await self.blob.save_meta(GZIP_INDEX, exported)

    async def _open(self, saved: bytes | None) -> bytes:
        """Open a rapidgzip handle with the ``saved`` index, or build one by reading the whole
        layer once; returns the index as saved."""
        self._file = _BlobFile(self.blob, trio.lowlevel.current_trio_token())
        handle = await self._call(rapidgzip.open, self._file, PARALLELIZATION)

        def load() -> bytes:
            if saved is not None:
                handle.import_index(io.BytesIO(saved))
            else:
                while handle.read(PASS_CHUNK):
                    pass
            out = io.BytesIO()
            if saved is None:
                handle.export_index(out)
            return out.getvalue()

        try:
            exported = await self._call(load)
            self.size = await self._call(handle.size)
        except BaseException:
            await trio.to_thread.run_sync(handle.close)
            raise
        self._handle = handle
        return exported

    async def read(self, offset: int, length: int, hint: ReadHint = NO_READAHEAD) -> bytes:
        await self.prepare()
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        first, last = offset // DECODED_CHUNK, (end - 1) // DECODED_CHUNK
        chunks = [await self._chunk(i) for i in range(first, last + 1)]
        data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
        start = offset - first * DECODED_CHUNK
        return data[start : start + end - offset]

    async def _chunk(self, index: int) -> bytes:
        """One aligned chunk of output: the kernel reads 128 KiB at a time, and each trip into
        rapidgzip costs a thread hop and a seek, so output is decoded and kept a MiB at a time."""
        if (chunk := self._chunks.get(index)) is not None:
            return chunk
        offset = index * DECODED_CHUNK
        length = min(DECODED_CHUNK, self.size - offset)

        def pread() -> bytes:
            self._handle.seek(offset)
            return self._handle.read(length)

        async with self._lock:
            if (chunk := self._chunks.get(index)) is None:
                chunk = await self._call(pread)
                if len(chunk) != length:
                    raise ArchiveError(f"gzip layer {self.digest} ended early at offset {offset}")
                self._chunks[index] = chunk
        return chunk

    async def aclose(self) -> None:
        """Stop rapidgzip's threads; one still running when Python exits aborts the process.
        Off the event loop: a thread finishing a read may still need the loop to serve it."""
        async with self._lock:
            if self._handle is not None:
                await trio.to_thread.run_sync(self._handle.close)
                self._handle = None

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking rapidgzip call in a worker thread; our own errors from inside its
        reads (a registry failure) come out as themselves, anything else as a corrupt layer."""
        assert self._file is not None
        self._file.failure = None
        try:
            return await trio.to_thread.run_sync(function, *args)
        except Exception as exc:
            if isinstance(self._file.failure, ModelKitFSError):
                raise self._file.failure from None
            raise ArchiveError(
                f"layer {self.digest} is not a valid gzip stream ({exc}): the artifact is "
                "corrupt; push it again"
            ) from None
