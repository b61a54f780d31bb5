"""A layer read file after file from every part of it is fetched whole, in large requests; one
read here and there, or one large file read at random, is not."""

from __future__ import annotations

import io
import random
import tarfile

import trio

from modelkitfs.archive.layer import BROAD_FILES, open_layer
from modelkitfs.cache import MemoryCache
from modelkitfs.registry.testing import MemorySource
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
                assert await layer.read(entry.offset, entry.size, end) == data[entry.offset : end]
            if expect_whole:
                await until(lambda: store.verifier.is_verified(digest), "the layer fetched whole")
            await store.flush()
            cached.append(await layer.blob.cached_bytes())

    trio.run(main)
    return cached[0]


def test_a_layer_read_file_after_file_from_every_part_is_fetched_whole() -> None:
    order = random.Random(2).sample(range(FILES), BROAD_FILES)
    assert read_files(order, expect_whole=True) == len(image_folder())


def test_files_read_from_one_part_of_a_layer_fetch_only_their_blocks() -> None:
    cached = read_files(list(range(FILES // 2 - BROAD_FILES, FILES // 2)), expect_whole=False)
    assert cached < len(image_folder()) // 2
