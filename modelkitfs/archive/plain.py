"""An uncompressed layer: its bytes are its blob's, read through the block cache.

Of the formats only this one passes a reader's hints on to the blob (readahead up to the end
of the file, a tensor fetched whole), answers from what is held without waiting, and knows
the cache blocks its bytes lie in: compressed layers are read from their decoded bytes.

A layer read file after file from every part of it (an image folder under a data loader's
shuffled workers) is a layer that will be read whole: once reads have taken ``BROAD_FILES``
files from ``BROAD_REGIONS`` of its sixteenths, it is fetched as a prefetch fetches it, in large
parallel requests, rather than block by block as each file asks. A reader of one large file,
however randomly, never gets its layer fetched whole so.
"""

from __future__ import annotations

import logging

from modelkitfs.archive.stream import LayerStream
from modelkitfs.blobs import NO_READAHEAD, Blob, ReadHint
from modelkitfs.errors import ModelKitFSError

log = logging.getLogger(__name__)

BROAD_FILES = 32  # files read from a layer...
BROAD_REGIONS = 8  # ...from this many of its sixteenths: it is fetched whole


class PlainStream(LayerStream):
    """An uncompressed layer: its bytes are the blob's."""

    def __init__(self, blob: Blob) -> None:
        super().__init__(blob)
        self.size = blob.size
        self.cached = blob.cached
        self._files: set[int] | None = set()  # where files read end; None once fetched whole
        self._regions: set[int] = set()  # sixteenths of the layer they were read from

    def known_size(self) -> int | None:
        return self.size

    async def read(self, offset: int, length: int, hint: ReadHint = NO_READAHEAD) -> bytes:
        """Through the cache. With no hint, no readahead: the tar index walk fetches its own
        windows in parallel, and its reads must not pass for a reader going through a file."""
        self._note(offset, hint.file_end)
        return await self.blob.read(offset, length, hint)

    async def read_sparse(self, offset: int, length: int) -> bytes:
        return await self.blob.read_sparse(offset, length)

    def read_now(self, offset: int, length: int, hint: ReadHint) -> bytes | None:
        """The bytes, if in memory or the page cache (the blob's ``read_now``); else None."""
        self._note(offset, hint.file_end)
        return self.blob.read_now(offset, length, hint)

    def block_around(self, offset: int) -> tuple[int, int] | None:
        size = self.blob.block_size
        start = offset // size * size
        return start, min(start + size, self.blob.size)

    async def read_held(self, offset: int, length: int) -> bytes | None:
        """The bytes if nothing needs fetching (the blob's ``read_held``); else None."""
        return await self.blob.read_held(offset, length)

    async def cached_bytes(self, offset: int, length: int) -> int | None:
        return await self.blob.cached_bytes(offset, offset + length)

    def _note(self, offset: int, end: int | None) -> None:
        """A read of the file ending at ``end``: fetch the layer whole once it is read broadly
        (see the module's docstring)."""
        if self._files is None or end is None or end in self._files or not self.blob.cached:
            return
        if len(self._files) < BROAD_FILES:  # enough counted: a million-file layer costs no more
            self._files.add(end)
        self._regions.add(offset * 16 // max(self.blob.size, 1))
        if len(self._files) >= BROAD_FILES and len(self._regions) >= BROAD_REGIONS:
            self._files = None
            self.blob.in_background(self._fetch_whole)

    async def _fetch_whole(self) -> None:
        try:
            await self.blob.fetch_verified()
        except ModelKitFSError as exc:  # the cache cannot keep it: block by block, as before
            log.info("layer %s is read broadly but cannot be fetched whole: %s", self.digest, exc)
