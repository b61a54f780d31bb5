"""Index a tar archive by walking its headers with range reads.

Understands what kit's Go writer produces (USTAR with the prefix field, PAX ``x`` and ``g``
records) and what other writers add (GNU ``L``/``K`` long names, ``./`` prefixes, trailing
slashes on directories, base-256 numbers). Only headers are read: file data is skipped, so a
256 MiB weight costs one 512-byte header. Reads come in windows that grow while headers keep
arriving back to back (many small files: few requests) and shrink after a jump over a large file.
Back to back, the walk reads most of the archive's bytes anyway: those reads go through the
cache, the next windows fetched in parallel, so that the walk is not one request at a time and
the small files it passes are cached for the reads that follow a listing.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import zlib
from dataclasses import dataclass

import outcome
import trio

from modelkitfs.archive.index import Entry, EntryKind, IndexSource, LayerIndex, normalize_name
from modelkitfs.errors import ArchiveError

log = logging.getLogger(__name__)

BLOCK = 512
MIN_WINDOW = 64 * 1024
MAX_WINDOW = 4 * 1024 * 1024
PARALLEL_WINDOWS = 4  # fetched beside the one read, on a walk through headers back to back
MAX_EXTENSION_SIZE = 1024 * 1024  # PAX records and GNU long names; real ones are tiny
# Each entry costs about half a KiB of the daemon's memory once mounted: a layer of empty
# files could otherwise make it take gigabytes (a million entries: about 500 MiB).
MAX_ENTRIES = 2_000_000

_HIGH_BYTES = bytes(range(128, 256))
_ZERO_BLOCK = bytes(BLOCK)
_OCTAL = b"01234567"
_KINDS = {
    b"0": EntryKind.FILE,
    b"\0": EntryKind.FILE,
    b"7": EntryKind.FILE,
    b"5": EntryKind.DIRECTORY,
    b"2": EntryKind.SYMLINK,
    b"1": EntryKind.HARDLINK,
}


# name, mode, uid, gid, size, mtime, checksum, typeflag, linkname, magic, version, uname,
# gname, devmajor, devminor, prefix
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s")
_ADLER_MODULUS = 65521


@dataclass(slots=True)
class Header:
    name: str
    mode: int
    size: int
    typeflag: bytes
    linkname: str


def _number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for values that do not fit in octal
        value = int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
        return value
    text = field.partition(b"\0")[0].strip(b" ")
    if text.strip(_OCTAL):  # int() would take a sign, "0o" or "_" too: a negative size loops
        raise ArchiveError(f"corrupt tar header: bad {what} field {field!r}")
    return int(text, 8) if text else 0


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def parse_header(block: bytes, offset: int) -> Header:
    """Decode one 512-byte header, checking its checksum."""
    (name, mode, _, _, size, _, checksum, typeflag, linkname, magic, _, _, _, _, _, prefix) = (
        _USTAR.unpack_from(block)
    )
    stored = _number(checksum, "checksum")
    # The checksum is the sum of the header's bytes with its own field as spaces. Adler-32's
    # low half is that sum (plus one) modulo 65521, computed in C: ten times faster than sum().
    # Equal modulo 65521 is equal when no other candidate lies between the least and the most
    # the bytes could sum to (each non-zero byte at most 255, the field's spaces 256): the
    # case for every real header; otherwise the bytes are summed.
    congruent = not (
        (stored - (zlib.adler32(block) & 0xFFFF) + 1 + sum(checksum) - 8 * 0x20) % _ADLER_MODULUS
    )
    unambiguous = (
        stored < _ADLER_MODULUS + 256
        and 255 * (BLOCK - block.count(0)) + 256 < stored + _ADLER_MODULUS
    )
    if not (congruent and unambiguous):
        outside = block[:148] + block[156:]
        unsigned = sum(outside) + 8 * 0x20
        # Some old writers summed the bytes as signed chars.
        signed = unsigned - 256 * (len(outside) - len(outside.translate(None, _HIGH_BYTES)))
        if stored not in (unsigned, signed):
            raise ArchiveError(f"corrupt tar header at offset {offset}: checksum mismatch")
    path = _text(name)
    if magic == b"ustar\0" and prefix[0]:  # POSIX prefix field
        path = _text(prefix) + "/" + path
    return Header(
        name=path,
        mode=_number(mode, "mode") & 0o7777,
        size=_number(size, "size"),
        typeflag=typeflag,
        linkname=_text(linkname) if linkname[0] else "",
    )


def parse_pax(data: bytes) -> dict[str, str]:
    """Parse PAX extended header records: ``"<len> <key>=<value>\\n"`` repeated."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        if data[position] == 0:
            break
        space = data.find(b" ", position)
        if space < 0:
            raise ArchiveError("corrupt PAX record: no length")
        try:
            length = int(data[position:space])
        except ValueError:
            raise ArchiveError("corrupt PAX record: bad length") from None
        record = data[space + 1 : position + length]
        if (
            not 0 < length <= len(data) - position
            or not record.endswith(b"\n")
            or b"=" not in record
        ):
            raise ArchiveError("corrupt PAX record")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


class _WindowReader:
    """Reads ranges of the source through a growing window, the next windows fetched in
    parallel (into the cache) while headers come back to back."""

    def __init__(self, source: IndexSource, nursery: trio.Nursery) -> None:
        self.source = source
        self.nursery = nursery
        self.window = MIN_WINDOW
        self.start = 0
        self.data = b""
        self.requests = 0
        self.fetched_end = 0  # where the windows fetched in parallel end
        self.tail_start = source.size
        self.tail = b""
        self.tail_fetched = trio.Event()
        if source.cached and source.size > MAX_WINDOW:
            self.tail_start = source.size - MIN_WINDOW
            nursery.start_soon(self._fetch_tail)
        else:
            self.tail_fetched.set()

    async def read(self, offset: int, length: int) -> bytes:
        end = offset + length
        if self.start <= offset and end <= self.start + len(self.data):
            return self.data[offset - self.start : end - self.start]
        if offset >= self.tail_start:
            await self.tail_fetched.wait()
            if end <= self.tail_start + len(self.tail):
                self.start, self.data, self.window = self.tail_start, self.tail, MIN_WINDOW
                return self.data[offset - self.start : end - self.start]
        buffered_end = self.start + len(self.data)
        dense = bool(self.data) and offset <= buffered_end + self.window
        self.window = min(self.window * 2, MAX_WINDOW) if dense else MIN_WINDOW
        self.start = offset
        if dense and self.source.cached:
            self._fetch_next_windows(offset + self.window)
        read = self.source.read if dense else self.source.read_sparse
        self.data = await read(offset, max(length, self.window))
        self.requests += 1
        if len(self.data) < length:
            raise ArchiveError(f"tar archive truncated at offset {offset + len(self.data)}")
        return self.data[:length]

    def _fetch_next_windows(self, start: int) -> None:
        """Have the windows after ``start`` fetched (into the cache) while this one is read."""
        start, stop = max(start, self.fetched_end), start + PARALLEL_WINDOWS * self.window
        for offset in range(start, min(stop, self.source.size), self.window):
            self.nursery.start_soon(self._fetch, offset, self.window)
        self.fetched_end = max(self.fetched_end, stop)

    async def _fetch_tail(self) -> None:
        """The archive's last window, fetched beside its first: a layer of one large file (a
        model's weights) has its next header, or the end-of-archive marker, there, and the
        walk then reaches it without a round trip of its own."""
        with contextlib.suppress(Exception):  # the walk reads it itself then
            self.tail = await self.source.read_sparse(self.tail_start, MIN_WINDOW)
        self.tail_fetched.set()

    async def _fetch(self, offset: int, length: int) -> None:
        with contextlib.suppress(Exception):  # the walk's own read of it fails and reports
            await self.source.read(offset, length)


async def build_tar_index(source: IndexSource) -> LayerIndex:
    """Walk every header of the tar archive ``source`` and index its members."""
    async with trio.open_nursery() as nursery:
        walked = await outcome.acapture(_walk, source, _WindowReader(source, nursery))
        nursery.cancel_scope.cancel()  # windows fetched past the end-of-archive marker
    return walked.unwrap()  # its error as it is, not in an exception group


async def _walk(source: IndexSource, reader: _WindowReader) -> LayerIndex:
    entries: list[Entry] = []
    global_pax: dict[str, str] = {}
    pax: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    offset = 0
    while offset + BLOCK <= source.size:
        block = await reader.read(offset, BLOCK)
        if block == _ZERO_BLOCK:
            break  # end-of-archive marker
        header = parse_header(block, offset)
        data_offset = offset + BLOCK
        size = header.size
        if header.typeflag in (b"x", b"g", b"L", b"K"):
            if size > MAX_EXTENSION_SIZE:
                raise ArchiveError(f"tar extension header at offset {offset} is implausibly large")
            payload = await reader.read(data_offset, size) if size else b""
            if header.typeflag == b"x":
                pax = parse_pax(payload)
            elif header.typeflag == b"g":
                global_pax.update(parse_pax(payload))
            elif header.typeflag == b"L":
                long_name = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                long_link = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            offset = data_offset + _padded(size)
            continue
        records = {**global_pax, **pax} if pax or global_pax else pax
        name = records.get("path", long_name if long_name is not None else header.name)
        linkname = records.get("linkpath", long_link if long_link is not None else header.linkname)
        if "size" in records:
            try:
                size = int(records["size"])
            except ValueError:
                size = -1
            if size < 0:
                raise ArchiveError(f"corrupt PAX size {records['size']!r} for {name!r}")
        pax, long_name, long_link = {}, None, None
        kind = _KINDS.get(header.typeflag)
        has_data = kind is EntryKind.FILE or header.typeflag not in _KINDS
        if has_data and data_offset + size > source.size:
            raise ArchiveError(f"tar archive truncated inside {name!r}")
        path = normalize_name(name)
        if kind is None:
            log.warning(
                "layer %s: skipping %r: unsupported tar entry type %r",
                source.digest,
                name,
                header.typeflag,
            )
        elif path is None:
            log.warning("layer %s: skipping %r: its path leaves the layer", source.digest, name)
        else:
            if len(entries) == MAX_ENTRIES:
                raise ArchiveError(
                    f"tar archive has more than {MAX_ENTRIES:,} entries: refusing to index it "
                    "(mounted, it would take gigabytes of memory); split the dataset into "
                    "several Kitfile entries or pack it as one archive file"
                )
            entries.append(
                Entry(
                    path,
                    kind,
                    header.mode,
                    size if kind is EntryKind.FILE else 0,
                    data_offset,
                    linkname,
                )
            )
        offset = data_offset + (_padded(size) if has_data else 0)
    else:
        # No end-of-archive marker: fine at a header boundary (Go's reader accepts that), not
        # inside a header or after an extension header that describes nothing.
        if offset < source.size or pax or long_name is not None or long_link is not None:
            raise ArchiveError(f"tar archive truncated at offset {min(offset, source.size)}")
    log.debug("indexed %s: %d entries in %d requests", source.digest, len(entries), reader.requests)
    return LayerIndex(entries)


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK
