"""The session: its background work runs in its nursery and its end joins it; it reads the
machine's own files only as its options' trust allows."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from modelkitfs.blobs import BlobStore, DiskCache
from modelkitfs.blobs.verification import VERIFIED_RECORD
from modelkitfs.errors import ModelKitFSError, NotAllowed
from modelkitfs.options import MountOptions
from modelkitfs.reference import parse_reference
from modelkitfs.sources import Sources
from tests.support.kitbuilder import build_modelkit, store_locally, write_layout
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


@pytest.mark.parametrize(
    ("reference", "allow", "readable"),
    [
        ("oci-layout:layouts/kit:v1", None, True),  # a user's own command reads any folder
        ("oci-layout:layouts/kit:v1", "layouts", True),
        ("oci-layout:layouts/../elsewhere/kit:v1", "layouts", False),
        ("oci-layout:layouts/link/kit:v1", "layouts", False),  # a symlink out of the folder
        ("oci-layout:elsewhere/kit:v1", "", False),
        ("secret:v1", "kitops/storage", True),  # kit's local storage
        ("secret:v1", "layouts", False),
    ],
)
def test_a_session_reads_local_sources_only_inside_the_folders_it_may(
    reference: str,
    allow: str | None,
    readable: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KITOPS_HOME", str(tmp_path / "kitops"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src/w.bin").write_bytes(b"w")
    kit = build_modelkit(tmp_path / "src", {"manifestVersion": "1.0.0", "model": {"path": "w.bin"}})
    for folder in ("layouts/kit", "elsewhere/kit"):
        write_layout(tmp_path / folder, kit, "v1")
    (tmp_path / "layouts/link").symlink_to(tmp_path / "elsewhere")
    store_locally(tmp_path / "kitops", "localhost", "secret", "v1", kit)
    folders = None if allow is None else tuple(f for f in [allow] if f)
    options = MountOptions(cache_dir=str(tmp_path / "cache"), allow_local=folders)

    async def main() -> None:
        async with Sources(options) as sources:
            if readable:
                opened = await sources.open_kit(parse_reference(reference))
                assert opened.manifest_digest == kit.digest
            else:
                with pytest.raises(NotAllowed, match="--allow-local"):
                    await sources.open_kit(parse_reference(reference))

    trio.run(main)
