"""Bad input through the real command: one line naming the problem and the fix, a non-zero exit
code, no traceback, nothing left mounted."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
from pathlib import Path

import pytest

from modelkitfs.cli import main
from tests.conftest import MiB, Mounts, daemon_pid, running
from tests.support.clirun import assert_one_line_error, run_cli
from tests.support.kitbuilder import Artifact, build_modelkit, sha256
from tests.support.registry_server import free_port
from tests.support.waiting import wait_for


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


@pytest.fixture(scope="module")
def data_kit(tmp_path_factory: pytest.TempPathFactory, publish) -> str:
    source = tmp_path_factory.mktemp("data-kit")
    (source / "model.bin").write_bytes(random.Random(8).randbytes(MiB))
    (source / "data/sub").mkdir(parents=True)
    (source / "data/train.csv").write_text("x,y\n1,2\n")
    (source / "data/sub/more.csv").write_text("x\n")
    kitfile = {
        "manifestVersion": "1.0.0",
        "package": {"name": "inspected", "version": "2.0", "authors": ["Ada"]},
        "model": {"name": "m", "path": "model.bin", "framework": "torch"},
        "datasets": [{"name": "train", "path": "data"}],
    }
    return publish(build_modelkit(source, kitfile, compression="gzip"), "cli/data")


def test_inspect_without_fetching_a_layer(data_kit: str, proxy, tmp_path: Path) -> None:
    reference = f"{proxy.address}/{data_kit}"
    proxy.reset()
    result = run_cli("inspect", "--plain-http", reference, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"reference {reference}"
    assert "package   inspected 2.0 (by Ada)" in lines
    assert "model     m model.bin torch" in lines
    assert "datasets  train data" in lines
    assert any(line.startswith("TYPE") and "MEDIA TYPE" in line for line in lines)
    assert proxy.blob_bytes < 64 * 1024  # the config, not the 1 MiB model layer
    document = json.loads(
        run_cli("inspect", "--json", "--plain-http", reference, cache=tmp_path / "cache").stdout
    )
    assert [layer["type"] for layer in document["layers"]] == ["model", "datasets"]  # -f datasets
    assert [layer["layer_type"] for layer in document["layers"]] == ["model", "dataset"]
    assert {layer["compression"] for layer in document["layers"]} == {"gzip"}
    assert all(layer["cached"] == 0 for layer in document["layers"])
    assert (
        document["layers"][1]["media_type"] == "application/vnd.kitops.modelkit.dataset.v1.tar+gzip"
    )


def test_ls(data_kit: str, proxy, tmp_path: Path) -> None:
    reference = f"{proxy.address}/{data_kit}"
    cache = tmp_path / "cache"
    result = run_cli("ls", "--plain-http", reference, cache=cache)
    assert result.stdout.split() == ["Kitfile", "data/", "model.bin"], result.stderr
    result = run_cli("ls", "-l", "--plain-http", reference, "data", cache=cache)
    assert result.stdout.splitlines() == [  # a gzip layer: what is cached of the layer
        "drwxr-xr-x              0          - sub/",
        "-rw-r--r--              8 layer 100% train.csv",
    ]
    listed = json.loads(
        run_cli("ls", "--json", "--plain-http", reference, "data/sub", cache=cache).stdout
    )
    assert len(listed) == 1
    assert listed[0]["layer_cached"] == listed[0]["layer_size"] > 0
    assert listed[0] == {
        "path": "data/sub/more.csv",
        "type": "file",
        "size": 2,
        "mode": 0o644,
        "cached": None,  # not known per file in a compressed layer
        "layer": listed[0]["layer"],
        "layer_cached": listed[0]["layer_cached"],
        "layer_size": listed[0]["layer_size"],
    }
    assert_one_line_error(
        run_cli("ls", "--plain-http", reference, "data/nothing", cache=cache), "no 'data/nothing'"
    )


def test_mounts_lists_serving_and_dead_mounts(
    small_kit: str, proxy, mounts: Mounts, tmp_path: Path
) -> None:
    serving = mounts.mount(small_kit, name="serving")
    (serving / "model.bin").read_bytes()
    dead = mounts.mount(small_kit, name="dead")
    pid = daemon_pid(dead)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not running(pid), "the killed daemon is gone")
    listed = {
        m["mountpoint"]: m for m in json.loads(run_cli("mounts", "--json", cache=tmp_path).stdout)
    }
    assert listed[str(serving)]["reference"] == f"{proxy.address}/{small_kit}"
    assert listed[str(serving)]["dead"] is False and listed[str(serving)]["fetched_bytes"] > 0
    assert listed[str(dead)]["dead"] is True
    table = run_cli("mounts", cache=tmp_path).stdout
    assert f"dead: run 'modelkitfs umount {dead}'" in table and "serving" in table


def test_help_has_examples_and_completion_is_valid_bash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = [
        *("mount", "umount", "prefetch", "inspect", "ls", "cat", "cp", "list", "mounts"),
        *("cache", "completion"),
    ]
    for command in [[], *([c] for c in commands)]:  # in this process: a command each is slow
        with pytest.raises(SystemExit) as ended:
            main([*command, "--help"])
        shown = capsys.readouterr().out
        assert ended.value.code == 0 and "\nexamples:\n  " in shown, command
        assert "modelkitfs " in shown.partition("\nexamples:\n")[2], command
    result = run_cli("--help", cache=tmp_path)  # and as the command prints it
    assert result.returncode == 0 and "\nexamples:\n  " in result.stdout
    assert run_cli("--version", cache=tmp_path).stdout.startswith("modelkitfs ")
    script = run_cli("completion", "bash", cache=tmp_path).stdout
    calls = [
        "modelkitfs mo",
        "modelkitfs ls --pl",
        "modelkitfs cache ''",
        "modelkitfs mount --prefetch ''",
        "modelkitfs prefetch --filter da",
        "modelkitfs completion ''",
    ]
    tries = "".join(
        f"COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMPREPLY=(); "
        f'_shtab_modelkitfs; echo "${{COMPREPLY[*]}}"\n'
        for words in calls
    )
    completed = subprocess.run(
        ["bash", "-c", f"{script}\n{tries}"], capture_output=True, text=True, check=True
    )
    assert completed.stdout.splitlines() == [
        "mount mounts",
        "--plain-http",
        "info ls verify prune clear",
        "none model all",
        "datasets",
        "bash zsh",
    ]
    assert run_cli("completion", "zsh", cache=tmp_path).stdout.startswith("#compdef modelkitfs")


def test_umount_completes_the_mounted_folders(
    small_kit: str, mounts: Mounts, tmp_path: Path
) -> None:
    mounted = mounts.mount(small_kit, name="completed")
    script = run_cli("completion", "bash", cache=tmp_path).stdout
    words = f"modelkitfs umount {mounted.parent}/comp"
    completed = subprocess.run(
        [
            "bash",
            "-c",
            f"{script}\nCOMP_WORDS=({words}); COMP_CWORD=2; _shtab_modelkitfs; "
            'echo "${COMPREPLY[*]}"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout.split() == [str(mounted)]


def test_readme_tables_match_the_help(tmp_path: Path) -> None:
    """Every command of ``--help`` has a row in the README's command table and every row is a
    command; every option the README's table names is one some command takes."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.partition("| command | what it does |")[2].partition("\n\n")[0]
    rows = re.findall(r"^\| `([a-z]+)[ `]", table, re.M)
    helped = run_cli("--help", cache=tmp_path).stdout
    listed = re.findall(r"^    ([a-z]+)\b", helped.partition("COMMAND\n")[2], re.M)
    assert rows == listed
    options = re.findall(r"^\| `(--[a-z-]+)", readme.partition("| option | meaning |")[2], re.M)
    every = "".join(
        run_cli(command, "--help", cache=tmp_path).stdout for command in ("mount", "umount")
    )
    assert options and all(f"{option}" in every for option in options), options
