"""Credentials found where kit finds them, in kit's order, each for its own host only."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from modelkitfs.registry.credentials import find_credential, pair_registry


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    kit, docker = tmp_path / "kitops", tmp_path / "docker"
    kit.mkdir()
    docker.mkdir()
    monkeypatch.setenv("KITOPS_HOME", str(kit))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    for name in ("USERNAME", "PASSWORD", "REGISTRY", "AUTH_CONFIG"):
        monkeypatch.delenv(f"MODELKITFS_{name}", raising=False)
    return kit, docker


def auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_kit_credentials_come_before_docker(homes: tuple[Path, Path]) -> None:
    kit, docker = homes
    (kit / "credentials.json").write_text(json.dumps({"auths": {"r.io": auth("kit", "k")}}))
    (docker / "config.json").write_text(
        json.dumps({"auths": {"r.io": auth("docker", "d"), "https://other.io/v2/": auth("o", "p")}})
    )
    found = find_credential("r.io")
    assert found is not None and (found.username, found.secret) == ("kit", "k")
    other = find_credential("other.io")  # keys with a scheme and path match the host
    assert other is not None and (other.username, other.secret) == ("o", "p")
    assert find_credential("nowhere.io") is None


def test_docker_hub_key_and_identity_token(homes: tuple[Path, Path]) -> None:
    _, docker = homes
    config = {"auths": {"https://index.docker.io/v1/": {"identitytoken": "refresh-me"}}}
    (docker / "config.json").write_text(json.dumps(config))
    found = find_credential("registry-1.docker.io")
    assert found is not None and found.identity_token and found.secret == "refresh-me"


def test_the_environment_wins_for_its_registry_alone(
    homes: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kit, _ = homes
    (kit / "credentials.json").write_text(
        json.dumps({"auths": {"r.io": auth("kit", "k"), "other.io": auth("o", "p")}})
    )
    monkeypatch.setenv("MODELKITFS_USERNAME", "ci")
    monkeypatch.setenv("MODELKITFS_PASSWORD", "secret")
    assert pair_registry("r.io/team/llm:v1") == {"MODELKITFS_REGISTRY": "r.io"}
    monkeypatch.setenv("MODELKITFS_REGISTRY", "r.io")
    assert pair_registry("other.io/team/llm:v1") == {}  # set already: left as it is
    found = find_credential("r.io")
    assert found is not None and (found.username, found.secret) == ("ci", "secret")
    # Another registry (a kit's model.path elsewhere, a mirror) gets its own, or nothing.
    other = find_credential("other.io")
    assert other is not None and (other.username, other.secret) == ("o", "p")
    assert find_credential("mirror.io:5000") is None
    monkeypatch.delenv("MODELKITFS_REGISTRY")
    found = find_credential("r.io")  # the pair names no registry: it is for none
    assert found is not None and (found.username, found.secret) == ("kit", "k")


def test_a_given_docker_config_is_the_only_source_and_per_host(
    homes: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kit, _ = homes
    (kit / "credentials.json").write_text(json.dumps({"auths": {"b.io": auth("kit", "k")}}))
    monkeypatch.setenv("MODELKITFS_USERNAME", "ci")
    monkeypatch.setenv("MODELKITFS_PASSWORD", "secret")
    monkeypatch.setenv("MODELKITFS_REGISTRY", "a.io")
    given = {"auths": {"a.io": auth("ada", "pw"), "https://c.io:5000/v2/": auth("cy", "c")}}
    monkeypatch.setenv("MODELKITFS_AUTH_CONFIG", json.dumps(given))
    a, c = find_credential("a.io"), find_credential("c.io:5000")
    assert a is not None and (a.username, a.secret) == ("ada", "pw")
    assert c is not None and (c.username, c.secret) == ("cy", "c")
    assert find_credential("b.io") is None  # neither the pair nor the node's files
    monkeypatch.setenv("MODELKITFS_AUTH_CONFIG", "[not an object")
    assert find_credential("a.io") is None


def test_credential_helpers(
    homes: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """credHelpers per host and credsStore for the rest, run as docker-credential-<name> get."""
    _, docker = homes
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, user in (("special", "helper-user"), ("store", "store-user")):
        helper = bin_dir / f"docker-credential-{name}"
        helper.write_text(
            "#!/bin/sh\n"
            'read host\n[ "$1" = get ] || exit 2\n'
            'case "$host" in nothing.io) echo "credentials not found"; exit 1;; esac\n'
            f'printf \'{{"ServerURL":"%s","Username":"{user}","Secret":"s-%s"}}\' "$host" "$host"\n'
        )
        helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = {"credHelpers": {"special.io": "special"}, "credsStore": "store", "auths": {}}
    (docker / "config.json").write_text(json.dumps(config))
    special = find_credential("special.io")
    assert special is not None and (special.username, special.secret) == (
        "helper-user",
        "s-special.io",
    )
    stored = find_credential("r.io:5000")
    assert stored is not None and (stored.username, stored.secret) == ("store-user", "s-r.io:5000")
    assert find_credential("nothing.io") is None
    assert "s-r.io" not in repr(stored)  # secrets stay out of logs
