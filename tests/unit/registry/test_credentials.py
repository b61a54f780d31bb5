"""Credentials found where kit finds them, in kit's order."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from modelkitfs.registry.credentials import find_credential


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    kit, docker = tmp_path / "kitops", tmp_path / "docker"
    kit.mkdir()
    docker.mkdir()
    monkeypatch.setenv("KITOPS_HOME", str(kit))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    monkeypatch.delenv("MODELKITFS_USERNAME", raising=False)
    monkeypatch.delenv("MODELKITFS_PASSWORD", raising=False)
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


def test_environment_wins(homes: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    kit, _ = homes
    (kit / "credentials.json").write_text(json.dumps({"auths": {"r.io": auth("kit", "k")}}))
    monkeypatch.setenv("MODELKITFS_USERNAME", "ci")
    monkeypatch.setenv("MODELKITFS_PASSWORD", "secret")
    found = find_credential("r.io")
    assert found is not None and (found.username, found.secret) == ("ci", "secret")


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
