"""Opening a kit for a session: what every opening does before its use (warn of filters that
select nothing, note the kit in the cache's catalog) and after it (close the kit's tree)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from modelkitfs.errors import ModelKitFSError
from modelkitfs.kit import KitTree
from modelkitfs.session import open_kit
from modelkitfs.session.catalog import recorded_kits
from modelkitfs.session.options import MountOptions
from tests.support.kitbuilder import Artifact, build_modelkit, write_layout

REFERENCE = "oci-layout:layouts/kit:v1"


def layout_kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Artifact:
    """A kit of one model file in an OCI layout at ``layouts/kit`` (the working directory)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src/w.bin").write_bytes(b"weights")
    kit = build_modelkit(tmp_path / "src", {"manifestVersion": "1.0.0", "model": {"path": "w.bin"}})
    write_layout(tmp_path / "layouts/kit", kit, "v1")
    return kit


def test_a_kit_opened_warns_of_each_filter_that_selects_nothing_and_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = layout_kit(tmp_path, monkeypatch)
    named = f"oci-layout:{tmp_path}/layouts/kit:v1"  # a layout is named by its absolute path
    cache = tmp_path / "cache"
    options = MountOptions(cache_dir=str(cache), filters=("model", "datasets:nope"))
    warnings: list[str] = []

    async def main() -> None:
        async with open_kit(REFERENCE, options, warnings.append) as opened:
            assert opened.kit.manifest_digest == kit.digest
            assert opened.name == named
            assert [node.path for node in opened.kit.tree.layers] == ["w.bin"]

    trio.run(main)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"--filter datasets:nope matches nothing in {named}")
    assert "its entries are model w.bin" in warnings[0]
    [record] = recorded_kits(cache)
    assert (record.manifest, record.references) == (kit.digest, (named,))


def test_the_kits_tree_is_closed_when_its_use_ends_also_by_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout_kit(tmp_path, monkeypatch)
    closed: list[KitTree] = []
    close = KitTree.aclose

    async def recording(tree: KitTree) -> None:
        closed.append(tree)
        await close(tree)

    monkeypatch.setattr(KitTree, "aclose", recording)
    options = MountOptions(cache_dir=str(tmp_path / "cache"))
    trees: list[KitTree] = []

    async def main(fail: bool) -> None:
        async with open_kit(REFERENCE, options) as opened:
            trees.append(opened.kit.tree)
            assert not closed[len(trees) - 1 :]
            if fail:
                raise ModelKitFSError("the use failed")  # as itself, not in an exception group

    trio.run(main, False)
    with pytest.raises(ModelKitFSError, match=r"^the use failed$"):
        trio.run(main, True)
    assert closed == trees and trees[0] is not trees[1]
