"""Bad input through the real command: one line naming the problem and the fix, a non-zero exit
code, no traceback, nothing left mounted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Mounts
from tests.kitbuilder import Artifact, build_modelkit, sha256
from tests.registry_server import free_port


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelkitfs.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MODELKITFS_CACHE_DIR": str(cache)},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("modelkitfs: error: ")
    for phrase in phrases:
        assert phrase in lines[0]


@pytest.fixture(scope="module")
def small_kit(tmp_path_factory: pytest.TempPathFactory, publish) -> str:
    source = tmp_path_factory.mktemp("small")
    (source / "model.bin").write_bytes(b"weights")
    kitfile = {"manifestVersion": "1.0.0", "model": {"name": "m", "path": "model.bin"}}
    return publish(build_modelkit(source, kitfile), "cli/small")


def container_image() -> Artifact:
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    return Artifact(manifest, config, {sha256(config): config})


def test_mount_and_umount(small_kit: str, proxy, tmp_path: Path) -> None:
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    result = run_cli(
        "mount",
        "--plain-http",
        f"{proxy.address}/{small_kit}",
        str(mountpoint),
        cache=tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr
    try:
        assert (mountpoint / "model.bin").read_bytes() == b"weights"
    finally:
        assert run_cli("umount", str(mountpoint), cache=tmp_path / "cache").returncode == 0
    assert not os.path.ismount(mountpoint)


@pytest.mark.parametrize(
    ("reference", "phrases"),
    [
        ("{proxy}/cli/nothing-here:latest", ["not found", "check the repository and tag"]),
        ("{proxy}/cli/small:no-such-tag", ["not found", "no-such-tag"]),
        ("127.0.0.1:{dead_port}/cli/small:latest", ["cannot reach registry", "running"]),
        ("{proxy}/cli/image:latest", ["is a container image, not a ModelKit"]),
        ("{proxy}/Cli/Upper", ["invalid repository", "lowercase"]),
    ],
)
def test_bad_references(
    reference: str, phrases: list[str], small_kit: str, proxy, publish, tmp_path: Path
) -> None:
    publish(container_image(), "cli/image")
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    ref = reference.format(proxy=proxy.address, dead_port=free_port())
    result = run_cli("mount", "--plain-http", ref, str(mountpoint), cache=tmp_path / "cache")
    assert_one_line_error(result, *phrases)
    assert not os.path.ismount(mountpoint)


def test_https_to_a_plain_registry_suggests_plain_http(
    small_kit: str, proxy, tmp_path: Path
) -> None:
    (tmp_path / "m").mkdir()
    result = run_cli(
        "mount", f"{proxy.address}/{small_kit}", str(tmp_path / "m"), cache=tmp_path / "cache"
    )
    assert_one_line_error(result, "--plain-http")


def test_bad_mountpoints(small_kit: str, proxy, mounts: Mounts, tmp_path: Path) -> None:
    ref = f"{proxy.address}/{small_kit}"
    cache = tmp_path / "cache"
    missing = tmp_path / "missing"
    assert_one_line_error(
        run_cli("mount", "--plain-http", ref, str(missing), cache=cache),
        "does not exist",
        "mkdir -p",
    )
    full = tmp_path / "full"
    full.mkdir()
    (full / "file").write_text("x")
    assert_one_line_error(
        run_cli("mount", "--plain-http", ref, str(full), cache=cache), "is not empty"
    )
    mounted = mounts.mount(small_kit, name="mounted")
    assert_one_line_error(
        run_cli("mount", "--plain-http", ref, str(mounted), cache=cache),
        "already a mount point",
        "modelkitfs umount",
    )
    assert (mounted / "model.bin").read_bytes() == b"weights"


def test_umount_of_a_folder_that_is_not_mounted(tmp_path: Path) -> None:
    assert_one_line_error(
        run_cli("umount", str(tmp_path), cache=tmp_path / "cache"), "is not mounted"
    )
