"""A layer's uncompressed bytes, whatever its format: what :class:`~.layer.LayerArchive` reads.

A layer is stored plain, gzipped or zstd-compressed, and each format answers a reader's
questions in its own way: a plain layer's bytes are its blob's, so its reads go through the
blob with their hints and it knows which cache block holds a byte; a compressed layer's bytes
are decoded, so it has nothing to say of blocks or of bytes held without waiting. This base
class gives the answers of a stream that has nothing (a compressed one); each format overrides
what it knows (:mod:`~.plain`, :mod:`~.gzip`, :mod:`~.zstd`), so the archive never asks which
format it reads.
"""

from __future__ import annotations

from modelkitfs.blobs import NO_READAHEAD, Blob, ReadHint


class LayerStream:
    """The uncompressed bytes of the layer in ``blob`` (what an index is built from, and files
    are read from), with ``size`` known once :meth:`prepare` returns."""

    cached = False  # reads land in the block cache: a tar walk's parallel windows pay

    def __init__(self, blob: Blob) -> None:
        self.blob = blob
        self.size = 0

    @property
    def digest(self) -> str:
        return self.blob.digest

    def known_size(self) -> int | None:
        """The uncompressed size if known before :meth:`prepare` (which may decode the whole
        layer); None when only preparing tells it."""
        return None

    async def prepare(self) -> None:
        """Make the bytes readable at any offset, and ``size`` known."""

    async def read(self, offset: int, length: int, hint: ReadHint = NO_READAHEAD) -> bytes:
        """``length`` bytes at ``offset``; ``hint`` says what the read is to the readahead (a
        reader's read of a file, or, by default, a tar index walk's)."""
        raise NotImplementedError

    async def read_sparse(self, offset: int, length: int) -> bytes:
        """Bytes between ones far apart, such as tar headers."""
        return await self.read(offset, length)

    def read_now(self, offset: int, length: int, hint: ReadHint) -> bytes | None:
        """What :meth:`read` answers, if it can be had without waiting; else None."""
        return None

    def block_around(self, offset: int) -> tuple[int, int] | None:
        """Where the cache block holding byte ``offset`` starts and ends; None when the bytes
        are not cached by blocks of the blob."""
        return None

    async def read_held(self, offset: int, length: int) -> bytes | None:
        """What :meth:`read` answers if nothing needs fetching; None when not known so."""
        return None

    async def cached_bytes(self, offset: int, length: int) -> int | None:
        """How many of ``length`` bytes at ``offset`` are cached; None when the bytes are not
        cached one file at a time."""
        return None

    async def prefetch(self) -> None:
        """Bring into the cache what reads of these bytes come from: by default the blob
        itself (verified), after what :meth:`prepare` derives from it."""
        await self.prepare()
        await self.blob.fetch_verified()

    async def aclose(self) -> None:
        """Release what reading holds (threads, handles)."""

    async def load_meta(self, name: str) -> bytes | None:
        return await self.blob.load_meta(name)

    async def save_meta(self, name: str, data: bytes) -> None:
        await self.blob.save_meta(name, data)
