"""The session: its background work runs in its nursery and its end joins it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from modelkitfs.blobs import BlobStore, DiskCache
from modelkitfs.blobs.verification import VERIFIED_RECORD
from modelkitfs.errors import ModelKitFSError
from modelkitfs.options import MountOptions
from modelkitfs.sources import Sources
from tests.unit.blobs.stores import BLOCK, OneBlob


def test_leaving_the_session_cancels_its_background_work_and_joins_it(tmp_path: Path) -> None:
    ended: list[str] = []

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            ended.append("cancelled")

    async def main() -> None:
        async with Sources(MountOptions(cache_dir=str(tmp_path))) as sources:
            sources.start_soon(forever)
            await trio.testing.wait_all_tasks_blocked()
            assert not ended
        assert ended == ["cancelled"]

    trio.run(main)


def test_what_ends_the_session_leaves_it_as_it_came(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(ModelKitFSError, match=r"^no such kit$"):  # not an exception group
            async with Sources(MountOptions(cache_dir=str(tmp_path))):
                raise ModelKitFSError("no such kit")

    trio.run(main)


def test_blocks_written_behind_and_their_verification_are_done_when_it_ends(
    tmp_path: Path,
) -> None:
    source = OneBlob(size=12 * BLOCK)

    async def main() -> None:
        async with Sources(MountOptions(cache_dir=str(tmp_path))) as sources:
            store = BlobStore(
                source,
                "repo",
                sources.cache,
                sources.nursery,
                budget=sources.budget,
                block_size=BLOCK,
            )
            sources.stores["memory", "repo"] = store
            assert await store.read(source.digest, source.size, 0, source.size) == source.data

    trio.run(main)
    cache = DiskCache(tmp_path)
    assert cache.cached_blocks(source.digest, BLOCK, 0, 11) == set(range(12))
    assert cache.read_meta(source.digest, VERIFIED_RECORD) is not None
