"""A zstd layer decompressed once into the cache: reads are the decompressed bytes, a later
stream on the machine reads them without fetching the layer again, and bytes that do not
match the layer's digest or its diffId are refused, never served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio
import zstandard

from modelkitfs.archive.zstd import ZstdStream
from modelkitfs.errors import ArchiveError, DigestMismatch
from modelkitfs.primitives.digests import sha256_digest
from tests.unit.memory_kit import memory_blob

PLAIN = np.random.default_rng(6).bytes(700_000) + bytes(900_000)
COMPRESSED = zstandard.ZstdCompressor().compress(PLAIN)
OFFSETS = [0, 65_535, 700_000 - 5, len(PLAIN) - 1000]


async def read_all(cache: Path, diff_id: str | None) -> tuple[dict[int, bytes], int, int]:
    async with memory_blob(cache, COMPRESSED) as memory:
        stream = ZstdStream(memory.blob, diff_id)
        got = {offset: await stream.read(offset, 1000) for offset in OFFSETS}
        await stream.prepare()
        return got, stream.size, memory.requests


def test_reads_are_the_decompressed_bytes(tmp_path: Path) -> None:
    got, size, _ = trio.run(read_all, tmp_path / "cache", sha256_digest(PLAIN))
    assert size == len(PLAIN)
    assert got == {offset: PLAIN[offset : offset + 1000] for offset in OFFSETS}


def test_a_later_stream_reads_the_decompressed_layer_from_the_cache(tmp_path: Path) -> None:
    diff_id = sha256_digest(PLAIN)

    async def main() -> tuple[int, int]:
        _, _, first = await read_all(tmp_path / "cache", diff_id)
        got, _, second = await read_all(tmp_path / "cache", diff_id)
        assert got == {offset: PLAIN[offset : offset + 1000] for offset in OFFSETS}
        return first, second

    first, second = trio.run(main)
    assert first > 0 and second == 0


def test_a_wrong_diff_id_is_refused(tmp_path: Path) -> None:
    wrong = sha256_digest(b"other bytes")
    with pytest.raises(DigestMismatch, match=f"not its diffId {wrong}"):
        trio.run(read_all, tmp_path / "cache", wrong)


def test_a_layer_that_is_not_zstd_is_an_archive_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with memory_blob(tmp_path / "cache", b"\x00not zstd" * 1000) as memory:
            await ZstdStream(memory.blob, None).prepare()

    with pytest.raises(ArchiveError, match="is not a valid zstd stream"):
        trio.run(main)
