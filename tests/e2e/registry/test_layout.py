"""ModelKits already on the machine: kit's local storage and OCI layout folders, mounted
without the network and without copying their blobs into the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelkitfs import ModelKitFSError
from tests.conftest import NESTED_KITFILE, Mounts, assert_same_tree
from tests.support.kitbuilder import build_modelkit, expected_tree, store_locally, write_layout


@pytest.fixture
def kit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "kitops"
    monkeypatch.setenv("KITOPS_HOME", str(home))
    return home


@pytest.mark.parametrize("compression", ["", "zstd"])
def test_kit_local_storage_is_mounted_in_place(
    nested_source: Path, kit_home: Path, proxy, mounts: Mounts, compression: str
) -> None:
    kit = build_modelkit(nested_source, NESTED_KITFILE, compression=compression)
    # "nested:v1" is kit's localhost/nested, which exists only in local storage; the other
    # names a registry but is found locally first, so nothing is fetched from it.
    store_locally(kit_home, "localhost", "nested", "v1", kit)
    store_locally(kit_home, proxy.address, "local/nested", "v2", kit)
    proxy.reset()
    for reference in ("nested:v1", f"{proxy.address}/local/nested:v2"):
        mountpoint = mounts.mount(reference, registry="")
        assert_same_tree(mountpoint, nested_source, expected_tree(nested_source, NESTED_KITFILE))
    assert proxy.manifest_requests == 0 and proxy.blob_requests == 0
    cached = {p.name for p in (mounts.cache_dir / "blocks").glob("sha256/*/*")}
    assert not cached & {digest.split(":")[1] for digest in kit.blobs}  # no blob copied


def test_localhost_reference_missing_locally_names_the_fix(kit_home: Path, mounts: Mounts) -> None:
    with pytest.raises(ModelKitFSError) as caught:
        mounts.mount("nowhere/kit:v1", registry="")
    message = str(caught.value)
    assert "not in kit's local storage" in message and "pack or pull it with kit" in message


def test_oci_layout_folder(nested_source: Path, tmp_path: Path, mounts: Mounts) -> None:
    kit = build_modelkit(nested_source, NESTED_KITFILE, compression="gzip")
    write_layout(tmp_path / "layout", kit, "v3")
    mountpoint = mounts.mount(f"oci-layout:{tmp_path / 'layout'}:v3", registry="")
    assert_same_tree(mountpoint, nested_source, expected_tree(nested_source, NESTED_KITFILE))
    with pytest.raises(ModelKitFSError, match="no manifest 'v4'"):
        mounts.mount(f"oci-layout:{tmp_path / 'layout'}:v4", registry="", name="missing")
