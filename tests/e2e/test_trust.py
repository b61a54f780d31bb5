"""The trust model (README, Security), tried as a hostile publisher and a tenant would: what a
kit's content names, and what a node service serves from the node's own files. Real registries,
real mounts, real ``serve``."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelkitfs.errors import ModelKitFSError
from tests.conftest import Mounts, write
from tests.e2e.test_serve import Service
from tests.support.kitbuilder import Artifact, build_modelkit, push, store_locally, write_layout
from tests.support.registry_server import RegistryAuth, running_registry

SECRET = b"the node's own secret\n"


@pytest.fixture
def node_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A kit of the node's holding ``secret.bin``, in an OCI layout and in kit's local storage
    (``localhost/secret:v1``), as an attacker hopes to find them; returns (layout, kit home)."""
    write(tmp_path / "secret-src/secret.bin", SECRET)
    secret = build_modelkit(
        tmp_path / "secret-src",
        {"manifestVersion": "1.0.0", "model": {"path": "secret.bin"}},
    )
    write_layout(tmp_path / "secret-layout", secret, "v1")
    home = tmp_path / "kitops"
    store_locally(home, "localhost", "secret", "v1", secret)
    monkeypatch.setenv("KITOPS_HOME", str(home))
    return tmp_path / "secret-layout", home


def service(base: Path, **settings: object) -> Service:
    """``modelkitfs serve`` in its own folder under ``base``, over one cache for the test."""
    base.mkdir()
    return Service(base, base.parent / "cache", **settings)


def naming(tmp_path: Path, model_path: str) -> Artifact:
    write(tmp_path / "hostile-src/README.md", b"# nothing to see\n")
    kitfile = {
        "manifestVersion": "1.0.0",
        "model": {"path": model_path},
        "docs": [{"path": "README.md"}],
    }
    return build_modelkit(tmp_path / "hostile-src", kitfile)


@pytest.mark.parametrize("where", ["layout", "storage"])
def test_a_kits_model_path_never_reaches_the_nodes_files(
    where: str, tmp_path: Path, node_files: tuple[Path, Path], publish, mounts: Mounts
) -> None:
    layout, _ = node_files
    model_path = f"oci-layout:{layout}:v1" if where == "layout" else "secret:v1"
    reference = publish(naming(tmp_path, model_path), f"hostile/{where}", "v1")
    with pytest.raises(ModelKitFSError) as refused:
        mounts.mount(reference)
    message = str(refused.value)
    assert f"model.path {model_path!r} names" in message, message
    assert "may name only a registry reference" in message
    assert "\n" not in message


def test_serve_reads_the_nodes_kit_storage_only_where_the_operator_allows(
    tmp_path: Path, node_files: tuple[Path, Path]
) -> None:
    _, home = node_files
    closed = service(tmp_path / "closed")
    try:
        with pytest.raises(PermissionError):
            os.listdir(closed.root / "secret:v1")
        assert "outside the folders this service may read" in closed.log
    finally:
        closed.stop()
    opened = service(tmp_path / "open", allow_local=home / "storage")
    try:
        assert (opened.root / "secret:v1" / "secret.bin").read_bytes() == SECRET
    finally:
        opened.stop()


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "private-registry").mkdir()
    with running_registry(tmp_path / "private-registry", htpasswd={"ada": "s3cret"}) as address:
        yield address


def test_a_private_kit_in_the_nodes_storage_needs_its_registrys_login(
    tmp_path: Path,
    private_registry: str,
    node_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kit's storage of the node holds a private kit pulled from a registry: a tenant without
    that registry's login gets nothing of it, one with it gets its bytes from the copy."""
    _, home = node_files
    write(tmp_path / "private-src/weights.bin", b"private weights\n")
    kit = build_modelkit(
        tmp_path / "private-src", {"manifestVersion": "1.0.0", "model": {"path": "weights.bin"}}
    )
    push(private_registry, "team/private", "v1", kit, auth=RegistryAuth("ada", "s3cret"))
    store_locally(home, private_registry, "team/private", "v1", kit)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    path = Path(private_registry, "team", "private:v1", "weights.bin")
    anonymous = service(tmp_path / "anonymous", allow_local=home / "storage")
    try:
        with pytest.raises(PermissionError):
            (anonymous.root / path).read_bytes()
    finally:
        anonymous.stop()
    login = base64.b64encode(b"ada:s3cret").decode()
    (home / "credentials.json").write_text(
        json.dumps({"auths": {private_registry: {"auth": login}}})
    )
    logged_in = service(tmp_path / "login", allow_local=home / "storage")
    try:
        assert (logged_in.root / path).read_bytes() == b"private weights\n"
        assert "in kit's local storage" in logged_in.log
    finally:
        logged_in.stop()
