"""Random access into a gzip layer: any range is the decompressed bytes, the checkpoint index
is built by one pass and saved, so that a later stream on the machine fetches only the span a
read needs; a stream that is not gzip is one clear error."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import trio

from modelkitfs.archive.gzip import GzipStream
from modelkitfs.errors import ArchiveError
from tests.unit.memory_kit import memory_blob

# Half random, half repeated: about 9 MiB out of about 5 compressed, several checkpoints.
PLAIN = b"".join(np.random.default_rng(4).bytes(512 * 1024) + bytes(512 * 1024) for _ in range(9))
COMPRESSED = gzip.compress(PLAIN, compresslevel=1)
OFFSETS = [0, 1, 4 * 1024 * 1024 - 3, 5_000_000, len(PLAIN) - 10_000]


async def reads(cache: Path) -> tuple[dict[int, bytes], int, int]:
    async with memory_blob(cache, COMPRESSED) as memory:
        stream = GzipStream(memory.blob)
        try:
            await stream.prepare()
            before = memory.requests
            got = {offset: await stream.read(offset, 10_000) for offset in OFFSETS}
        finally:
            await stream.aclose()
        return got, stream.size, before


def test_any_range_is_the_decompressed_bytes(tmp_path: Path) -> None:
    got, size, _ = trio.run(reads, tmp_path / "cache")
    assert size == len(PLAIN)
    assert got == {offset: PLAIN[offset : offset + 10_000] for offset in OFFSETS}


def test_the_index_is_saved_for_the_next_stream(tmp_path: Path) -> None:
    """The first stream's pass fetches the whole layer; the next one, on the same cache,
    starts from the saved index and fetches nothing to prepare."""

    async def main() -> tuple[int, int]:
        await reads(tmp_path / "cache")
        async with memory_blob(tmp_path / "cache", COMPRESSED) as memory:
            stream = GzipStream(memory.blob)
            try:
                await stream.prepare()
                prepared = memory.requests
                assert await stream.read(5_000_000, 100) == PLAIN[5_000_000:5_000_100]
            finally:
                await stream.aclose()
            return prepared, stream.size

    assert trio.run(main) == (0, len(PLAIN))


def test_a_layer_that_is_not_gzip_is_an_archive_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with memory_blob(tmp_path / "cache", b"not gzip at all" * 100) as memory:
            stream = GzipStream(memory.blob)
            try:
                await stream.prepare()
                await stream.read(0, 10)
            finally:
                await stream.aclose()

    with pytest.raises(ArchiveError) as failure:
        trio.run(main)
    assert "\n" not in str(failure.value)
