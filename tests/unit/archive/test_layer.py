"""A layer as an archive, over a source in memory: the files of a tar layer in every
compression, the one file of a raw layer (its size from the annotation only where the bytes
cannot tell it), what is cached of a file, a layer prefetched whole so that no read asks again,
and a layer read file after file from every part of it fetched whole, in large requests (one
read here and there, or one large file read at random, is not)."""

from __future__ import annotations

import io
import random
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import trio

from modelkitfs.archive import EntryKind, LayerArchive, RawFile
from modelkitfs.archive.index import INDEX_NAME
from modelkitfs.archive.layer import RAW_FILE_MODE, open_layer
from modelkitfs.archive.plain import BROAD_FILES
from modelkitfs.blobs import BlobStore, ReadHint
from modelkitfs.cache import MemoryCache
from modelkitfs.errors import ArchiveError
from modelkitfs.primitives.digests import sha256_digest
from modelkitfs.registry.testing import MemorySource
from tests.support.kitbuilder import compress
from tests.support.waiting import until
from tests.unit.blobs.stores import BLOCK, opened

FILES = 120


def image_folder() -> bytes:
    """A tar of ``FILES`` files of 50-150 KB: indexing it skips their bytes."""
    rng, out = random.Random(1), io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(FILES):
            data = rng.randbytes(rng.randrange(50_000, 150_000))
            info = tarfile.TarInfo(f"images/img{i:03d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def read_files(order: list[int], *, expect_whole: bool) -> int:
    """Read the files at positions ``order`` (of those of the layer, by offset); the bytes of
    the layer cached then."""
    source = MemorySource()
    data = image_folder()
    digest = source.add(data)
    cached: list[int] = []

    async def main() -> None:
        indexed = MemoryCache()  # indexing a tar of small files reads most of it
        async with opened(source, indexed) as store:
            await open_layer(store.blob(digest, len(data)), "").index()
        cache = MemoryCache()
        cache.meta = indexed.meta  # a later mount: the index in the cache, no block
        async with opened(source, cache, memory_bytes=64 * BLOCK) as store:
            layer = open_layer(store.blob(digest, len(data)), "")
            entries = [e for e in (await layer.index()).entries if e.size]
            files = sorted(entries, key=lambda e: e.offset)
            for position in order:
                entry = files[position]
                end = entry.offset + entry.size
                assert (
                    await layer.read(entry.offset, entry.size, ReadHint(file_end=end))
                    == data[entry.offset : end]
                )
            if expect_whole:
                await until(lambda: store.verifier.is_verified(digest), "the layer fetched whole")
            await store.flush()
            cached.append(await layer.cached_size())

    trio.run(main)
    return cached[0]


def test_a_layer_read_file_after_file_from_every_part_is_fetched_whole() -> None:
    order = random.Random(2).sample(range(FILES), BROAD_FILES)
    assert read_files(order, expect_whole=True) == len(image_folder())


def test_files_read_from_one_part_of_a_layer_fetch_only_their_blocks() -> None:
    cached = read_files(list(range(FILES // 2 - BROAD_FILES, FILES // 2)), expect_whole=False)
    assert cached < len(image_folder()) // 2


# --- a layer's files --------------------------------------------------------------------------

MEMBERS = {
    "model/weights.bin": np.random.default_rng(3).bytes(5 * BLOCK + 17),
    "model/config.json": b'{"layers": 2}',
    "README.md": b"# a kit\n",
}
COMPRESSIONS = ["", "gzip", "zstd"]


def tar_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o640
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


PLAIN_TAR = tar_of(MEMBERS)


def layer_in(
    store: BlobStore, source: MemorySource, plain: bytes, compression: str, raw: RawFile | None
) -> LayerArchive:
    blob = compress(plain, compression)
    digest = source.add(blob)
    return open_layer(
        store.blob(digest, len(blob)), compression, diff_id=sha256_digest(plain), raw=raw
    )


async def files_of(layer: LayerArchive) -> dict[str, bytes]:
    entries = (await layer.index()).entries
    return {
        e.path: await layer.read(e.offset, e.size, ReadHint(file_end=e.offset + e.size))
        for e in entries
        if e.kind is EntryKind.FILE
    }


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_a_tar_layer_s_files_are_their_bytes_in_every_compression(compression: str) -> None:
    source = MemorySource()

    async def main() -> None:
        async with opened(source, MemoryCache(), memory_bytes=64 * BLOCK) as store:
            layer = layer_in(store, source, PLAIN_TAR, compression, None)
            assert await files_of(layer) == MEMBERS
            modes = {e.path: e.mode for e in (await layer.index()).entries}
            assert modes["README.md"] & 0o777 == 0o640
            assert layer.size == len(source.blobs[layer.digest])  # as the registry has it
            await layer.aclose()

    trio.run(main)


def test_a_compression_kit_does_not_write_is_refused_naming_the_layer() -> None:
    source = MemorySource()

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            digest = source.add(PLAIN_TAR)
            with pytest.raises(ArchiveError) as refused:
                open_layer(store.blob(digest, len(PLAIN_TAR)), "bzip2")
            assert str(refused.value) == (
                f"layer {digest} is compressed with 'bzip2', which kit does not write; "
                "modelkitfs reads uncompressed, gzip and zstd layers"
            )

    trio.run(main)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("size", [None, 9])
def test_a_raw_layer_is_its_one_file(compression: str, size: int | None) -> None:
    """An uncompressed layer's size is the blob's whatever the annotation says; a compressed
    one's is the annotation's, or what decompressing it gives."""
    source = MemorySource()
    data = b"gguf weights" * 1000

    async def main() -> None:
        async with opened(source, MemoryCache(), memory_bytes=64 * BLOCK) as store:
            raw = RawFile("models/./llm.gguf", 0o600, size)
            layer = layer_in(store, source, data, compression, raw)
            [entry] = (await layer.index()).entries
            expected = size if size is not None and compression else len(data)
            assert (entry.path, entry.kind, entry.mode, entry.offset, entry.size) == (
                "models/llm.gguf",
                EntryKind.FILE,
                0o600,
                0,
                expected,
            )
            assert await layer.read(0, len(data), ReadHint(file_end=len(data))) == data

    trio.run(main)


def test_a_compressed_raw_layer_of_known_size_is_indexed_without_a_request() -> None:
    source = MemorySource()

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            layer = layer_in(store, source, b"x" * 5000, "zstd", RawFile("x.bin", size=5000))
            assert [e.size for e in (await layer.index()).entries] == [5000]
        assert source.requests == [] and source.sent == 0

    trio.run(main)


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "", ".", "a/../.."])
def test_a_raw_layer_naming_an_unsafe_path_is_refused(path: str) -> None:
    source = MemorySource()

    async def main() -> None:
        async with opened(source, MemoryCache()) as store:
            layer = layer_in(store, source, b"x", "", RawFile(path))
            with pytest.raises(ArchiveError) as refused:
                await layer.index()
            assert str(refused.value) == (
                f"raw layer {layer.digest} names an unsafe or empty file path {path!r}"
            )

    trio.run(main)


def test_a_raw_file_is_0644_unless_its_annotation_says_otherwise() -> None:
    assert RawFile("a.bin").mode == RAW_FILE_MODE == 0o644


def test_what_is_cached_of_a_file_is_known_for_an_uncompressed_layer_alone() -> None:
    source = MemorySource()
    weights = "model/weights.bin"

    async def main() -> None:
        async with opened(source, MemoryCache(), memory_bytes=64 * BLOCK) as store:
            plain = layer_in(store, source, PLAIN_TAR, "", None)
            zstd = layer_in(store, source, PLAIN_TAR, "zstd", None)
            for layer in (plain, zstd):
                entry = next(e for e in (await layer.index()).entries if e.path == weights)
                hint = ReadHint(file_end=entry.offset + entry.size)
                if layer is zstd:
                    assert await layer.cached_bytes(entry.offset, entry.size) is None
                    assert layer.read_now(entry.offset, 10, hint) is None  # never without waiting
                    continue
                before = await layer.cached_bytes(entry.offset, entry.size)
                assert before is not None and before < entry.size
                assert (
                    await layer.read(entry.offset, entry.size, replace(hint, ahead=False))
                    == (MEMBERS[weights])
                )
                await store.flush()
                assert await layer.cached_bytes(entry.offset, entry.size) == entry.size
                assert layer.read_now(entry.offset + 5, 10, hint) == MEMBERS[weights][5:15]

    trio.run(main)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_a_prefetched_layer_is_read_without_another_request(compression: str) -> None:
    source = MemorySource()

    async def main() -> None:
        async with opened(source, MemoryCache(), memory_bytes=64 * BLOCK) as store:
            layer = layer_in(store, source, PLAIN_TAR, compression, None)
            await layer.prefetch()
            await store.flush()
            assert await layer.blob.load_meta(INDEX_NAME) is not None  # for later mounts too
            asked = len(source.requests)
            assert await files_of(layer) == MEMBERS
            assert len(source.requests) == asked
            # A zstd layer keeps its decompressed bytes instead of the blob; the others the
            # blob, verified.
            kept = await layer.cached_size()
            assert kept == (0 if compression == "zstd" else layer.size)
            assert store.verifier.is_verified(layer.digest) is (compression != "zstd")
            await layer.aclose()

    trio.run(main)
