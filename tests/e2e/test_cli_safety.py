"""The command never harms what is not its own, and never shows a secret to other users: it
refuses to unmount other file systems, hands options to its daemon through a pipe, and the
daemon is found by its title."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import daemon_pid
from tests.support.clirun import one_line_error, run_cli
from tests.support.kitbuilder import build_modelkit, write_layout
from tests.support.tmpfs import small_fs


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A kit in an OCI layout folder: mounted without any network (a proxy is never used)."""
    base = tmp_path_factory.mktemp("layout")
    (base / "src").mkdir()
    (base / "src/model.bin").write_bytes(b"weights")
    kitfile = {"manifestVersion": "1.0.0", "model": {"name": "m", "path": "model.bin"}}
    write_layout(base / "kit", build_modelkit(base / "src", kitfile), "v1")
    return f"oci-layout:{base / 'kit'}:v1"


def test_umount_refuses_a_file_system_that_is_not_ours(tmp_path: Path) -> None:
    with small_fs(tmp_path / "other") as other:
        (other.path / "kept").write_text("still here")
        line = one_line_error(run_cli("umount", str(other.path), cache=tmp_path / "cache"))
        assert line == f"{other.path} is not a modelkitfs mount (tmpfs); use umount(8)"
        assert os.path.ismount(other.path)
        assert (other.path / "kept").read_text() == "still here"


def test_umount_of_a_missing_path_says_it_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    line = one_line_error(run_cli("umount", str(missing), cache=tmp_path / "cache"))
    assert line == f"{missing} does not exist: give the folder a kit is mounted at"


def test_daemon_gets_its_options_through_a_pipe_and_is_found_by_title(
    layout: str, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    cache = tmp_path / "cache"
    secret = "s3cret-pa55"
    result = run_cli(
        "mount",
        "--proxy",
        f"http://user:{secret}@127.0.0.1:9",
        "--cache-max-size",
        "123M",
        "--timeout",
        "77",
        layout,
        str(mountpoint),
        cache=cache,
    )
    assert result.returncode == 0, result.stderr
    try:
        assert (mountpoint / "model.bin").read_bytes() == b"weights"
        pid = daemon_pid(mountpoint)
        command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0")
        assert command == f"modelkitfs: {layout} on {mountpoint}".encode()
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        for value in (secret, "123M", "77"):
            assert value.encode() not in command
        assert secret.encode() not in environment
        found = subprocess.run(["pgrep", "modelkitfs"], capture_output=True, text=True)
        assert str(pid) in found.stdout.split()
        log = (cache / "logs" / "modelkitfs.log").read_text()
        assert secret not in log
    finally:
        assert run_cli("umount", str(mountpoint), cache=cache).returncode == 0
    assert not os.path.ismount(mountpoint)


def test_mount_without_cap_sys_admin_says_it_is_a_permission(layout: str, tmp_path: Path) -> None:
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    result = subprocess.run(
        [
            *("setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--"),
            *(sys.executable, "-m", "modelkitfs.cli", "mount", layout, str(mountpoint)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MODELKITFS_CACHE_DIR": str(tmp_path / "cache")},
    )
    line = one_line_error(result)
    assert line.startswith(f"cannot mount {mountpoint}: permission denied by the kernel")
    assert (
        "CAP_SYS_ADMIN: run as root, give a container --cap-add SYS_ADMIN --device /dev/fuse"
        in (line)
    )
    assert "modelkitfs.open()" in line
    assert not os.path.ismount(mountpoint)
