"""ModelKits on this machine, read from real files: an OCI layout folder's tags and manifests,
kit's local storage found by registry and repository, blobs read where they lie and checked,
and a local copy that serves a registry's kit only once the registry has named it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from modelkitfs.errors import DigestMismatch, NotFound, RegistryError
from modelkitfs.primitives.digests import sha256_digest
from modelkitfs.registry.layout import (
    LayoutSource,
    LoginChecked,
    from_kit_storage,
    from_layout_folder,
)
from modelkitfs.registry.testing import MemorySource
from tests.support.kitbuilder import Artifact, store_locally, write_layout

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = bytes(range(256)) * 40


def artifact(name: str = "model") -> Artifact:
    """A kit of one config and one layer, its manifest naming both."""
    config = json.dumps({"model": {"name": name}}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"digest": sha256_digest(config), "size": len(config)},
        "layers": [{"digest": sha256_digest(LAYER), "size": len(LAYER)}],
    }
    blobs = {sha256_digest(config): config, sha256_digest(LAYER): LAYER}
    return Artifact(json.dumps(manifest).encode(), config, blobs)


def run(main):  # type: ignore[no-untyped-def]
    return trio.run(main)


@pytest.fixture
def kit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "kitops"
    monkeypatch.setenv("KITOPS_HOME", str(home))
    return home


def blob_file(source: LayoutSource, digest: str) -> Path:
    return source.root / "blobs" / "sha256" / digest.split(":", 1)[1]


# --- OCI layout folders --------------------------------------------------------------------------


def test_a_layout_serves_its_tagged_manifest_and_blobs_where_they_lie(tmp_path: Path) -> None:
    kit = artifact()
    write_layout(tmp_path / "layout", kit, "v1")
    source = from_layout_folder(str(tmp_path / "layout"))
    layer = sha256_digest(LAYER)

    async def main() -> None:
        manifest = await source.get_manifest("any", "v1")
        assert (manifest.digest, manifest.media_type, manifest.raw) == (
            kit.digest,
            OCI_MANIFEST,
            kit.manifest,
        )
        assert await source.get_manifest("any", kit.digest) == manifest
        assert await source.get_blob("any", sha256_digest(kit.config)) == kit.config
        assert await source.get_range("any", layer, 100, 5000) == LAYER[100:5000]
        pieces: list[bytes] = []
        await source.deliver_range("any", layer, 10, 2510, 1000, lambda b: pieces.append(bytes(b)))
        assert pieces == [LAYER[10:1010], LAYER[1010:2010], LAYER[2010:2510]]

    run(main)
    assert source.in_place and not source.ignores_range
    assert source.registry == f"oci-layout:{tmp_path / 'layout'}"
    assert source.stats.ranges == 2


def test_a_layout_names_its_manifests_by_ref_name_and_its_only_one_latest(tmp_path: Path) -> None:
    one, two = artifact("one"), artifact("two")
    write_layout(tmp_path / "single", one, "v1")
    single = from_layout_folder(str(tmp_path / "single"))
    assert single.resolve("latest") == single.resolve("v1") == one.digest

    write_layout(tmp_path / "pair", one, "v1")
    for digest, data in [*two.blobs.items(), (two.digest, two.manifest)]:
        (tmp_path / "pair/blobs/sha256" / digest.split(":", 1)[1]).write_bytes(data)
    index = json.loads((tmp_path / "pair/index.json").read_text())
    index["manifests"].append({"digest": two.digest, "size": len(two.manifest)})  # no name
    (tmp_path / "pair/index.json").write_text(json.dumps(index))
    pair = from_layout_folder(str(tmp_path / "pair"))
    assert pair.resolve("v1") == one.digest and pair.resolve(two.digest) == two.digest
    assert pair.resolve("latest") is None  # two manifests: neither is the one
    assert pair.resolve("sha256:" + "0" * 64) is None


def test_a_folder_that_is_no_layout_says_what_one_holds(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(NotFound, match=r"no oci-layout file.*oci-layout, index\.json and blobs/"):
        from_layout_folder(str(tmp_path))


def test_an_unreadable_index_is_an_error_naming_the_file(tmp_path: Path) -> None:
    write_layout(tmp_path / "layout", artifact(), "v1")
    (tmp_path / "layout/index.json").write_text("{not json")
    with pytest.raises(RegistryError, match=r"cannot read .*index\.json"):
        from_layout_folder(str(tmp_path / "layout"))


def test_a_missing_tag_points_at_kit_list(tmp_path: Path) -> None:
    write_layout(tmp_path / "layout", artifact(), "v1")
    source = from_layout_folder(str(tmp_path / "layout"))

    async def main() -> None:
        with pytest.raises(NotFound, match=r"no manifest 'v2'.*'kit list'"):
            await source.get_manifest("any", "v2")

    run(main)


def test_damaged_blobs_are_refused_with_what_to_do(tmp_path: Path) -> None:
    kit = artifact()
    write_layout(tmp_path / "layout", kit, "v1")
    source = from_layout_folder(str(tmp_path / "layout"))
    config, layer = sha256_digest(kit.config), sha256_digest(LAYER)

    async def main() -> None:
        with pytest.raises(RegistryError, match=f"has {len(kit.config)} bytes, not 1"):
            await source.get_blob("any", config, size=1)
        blob_file(source, config).write_bytes(kit.config.replace(b"model", b"modem"))
        with pytest.raises(DigestMismatch):
            await source.get_blob("any", config)
        blob_file(source, kit.digest).write_bytes(kit.manifest + b" ")
        with pytest.raises(DigestMismatch):
            await source.get_manifest("any", "v1")
        blob_file(source, layer).write_bytes(LAYER[:1000])
        with pytest.raises(RegistryError, match=r"shorter than its descriptor.*pull it again"):
            await source.get_range("any", layer, 500, 1500)
        blob_file(source, layer).unlink()
        with pytest.raises(RegistryError, match=f"cannot read blob {layer}"):
            await source.get_range("any", layer, 0, 10)
        with pytest.raises(NotFound, match=r"missing from .*incomplete; pull it again with kit"):
            await source.get_blob("any", layer)
        with pytest.raises(RegistryError, match="malformed digest"):
            await source.get_blob("any", "sha256:../../etc/passwd")

    run(main)


# --- kit's local storage -------------------------------------------------------------------------


def test_kit_storage_is_found_by_registry_repository_and_tag(kit_home: Path) -> None:
    kit, other = artifact("one"), artifact("two")
    store_locally(kit_home, "reg.test", "team/kit", "v1", kit)
    store_locally(kit_home, "reg.test", "team/other", "v1", other)
    source = from_kit_storage("reg.test", "team/kit", "v1")
    assert source is not None
    assert source.root == kit_home / "storage" and source.registry == "reg.test/team/kit"
    assert source.resolve("v1") == kit.digest and source.resolve(kit.digest) == kit.digest

    async def main() -> None:
        assert (await source.get_manifest("team/kit", "v1")).raw == kit.manifest

    run(main)
    by_digest = from_kit_storage("reg.test", "team/kit", kit.digest)
    assert by_digest is not None and by_digest.resolve(kit.digest) == kit.digest


def test_kit_storage_without_the_kit_is_no_source(kit_home: Path) -> None:
    assert from_kit_storage("reg.test", "team/kit", "v1") is None  # no storage at all
    store_locally(kit_home, "reg.test", "team/kit", "v1", artifact())
    assert from_kit_storage("reg.test", "team/kit", "v2") is None  # another tag
    assert from_kit_storage("other.test", "team/kit", "v1") is None  # another registry
    assert from_kit_storage("reg.test", "team/kits", "v1") is None  # another repository


# --- a local copy checked against the registry ---------------------------------------------------


def test_a_login_checked_copy_serves_what_the_registry_names_from_the_copy(
    kit_home: Path,
) -> None:
    kit = artifact()
    store_locally(kit_home, "reg.test", "team/kit", "v1", kit)
    copy = from_kit_storage("reg.test", "team/kit", "v1")
    assert copy is not None
    registry = MemorySource()
    registry.add_manifest(json.loads(kit.manifest), tag="moved")
    assert registry.manifests["moved"].digest == kit.digest  # the same bytes, json.dumps'd
    checked = LoginChecked(copy, registry)

    async def main() -> None:
        manifest = await checked.get_manifest("team/kit", "moved")  # the registry's tag
        assert manifest.digest == kit.digest and manifest.raw == kit.manifest
        assert await checked.get_range("team/kit", sha256_digest(LAYER), 0, 9) == LAYER[:9]
        with pytest.raises(NotFound):  # the registry does not serve it: neither does the copy
            await checked.get_manifest("team/kit", "v1")

    run(main)
    assert checked.in_place and registry.requests == []  # blobs came from the copy alone


def test_a_login_checked_copy_refuses_a_manifest_it_does_not_hold(kit_home: Path) -> None:
    store_locally(kit_home, "reg.test", "team/kit", "v1", artifact("old"))
    copy = from_kit_storage("reg.test", "team/kit", "v1")
    assert copy is not None
    registry = MemorySource()
    newer = registry.add_manifest(json.loads(artifact("new").manifest), tag="v1")

    async def main() -> None:
        with pytest.raises(NotFound) as refused:
            await LoginChecked(copy, registry).get_manifest("team/kit", "v1")
        message = str(refused.value)
        assert newer.digest in message and "pull it with kit" in message
        assert "--allow-local" in message

    run(main)
