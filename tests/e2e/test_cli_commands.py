"""The commands kit users reach for, run as a user would: inspect --kitfile and --json, cat and
cp without a mount (through the same cache), ls -R, list and cache ls naming kits and paths, and
prefetch's output on a terminal and in a pipe."""

from __future__ import annotations

import json
import os
import pty
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import MiB
from tests.support.clirun import one_line_error, read_terminal, run_cli
from tests.support.kitbuilder import build_modelkit

KITFILE = {
    "manifestVersion": "1.0.0",
    "package": {"name": "tools", "version": "3.1", "authors": ["Ada"]},
    "model": {"name": "m", "path": "model.bin", "format": "safetensors", "framework": "torch"},
    "datasets": [{"name": "train", "path": "data", "description": "rows"}],
}
MODEL = random.Random(20).randbytes(2 * MiB + 123)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, publish, proxy) -> tuple[str, Path]:
    """(reference, the folder it was built from)."""
    source = tmp_path_factory.mktemp("commands")
    (source / "model.bin").write_bytes(MODEL)
    (source / "data/sub").mkdir(parents=True)
    (source / "data/train.csv").write_text("x,y\n1,2\n")
    (source / "data/sub/more.csv").write_text("x\n")
    reference = publish(build_modelkit(source, KITFILE), "cli/commands")
    return f"{proxy.address}/{reference}", source


def test_inspect_kitfile_and_every_field_in_json(kit: tuple[str, Path], tmp_path: Path) -> None:
    reference, _ = kit
    cache = tmp_path / "cache"
    kitfile = run_cli("inspect", "--kitfile", "--plain-http", reference, cache=cache)
    assert kitfile.returncode == 0, kitfile.stderr
    catted = run_cli("cat", "--plain-http", reference, "Kitfile", cache=cache)
    assert kitfile.stdout == catted.stdout  # the Kitfile a mount shows, as kit writes it
    document = yaml.safe_load(kitfile.stdout)
    assert document["model"]["format"] == "safetensors"
    report = json.loads(run_cli("inspect", "--json", "--plain-http", reference, cache=cache).stdout)
    assert report["model"]["format"] == "safetensors"
    assert report["package"]["authors"] == ["Ada"]
    assert report["datasets"][0]["description"] == "rows"
    assert [layer["type"] for layer in report["layers"]] == ["model", "datasets"]
    both = run_cli("inspect", "--json", "--kitfile", reference, cache=cache)
    assert "not allowed with argument" in one_line_error(both)


def test_cat_and_cp_read_without_a_mount_through_the_cache(
    kit: tuple[str, Path], proxy, tmp_path: Path
) -> None:
    reference, source = kit
    cache = tmp_path / "cache"
    catted = subprocess.run(
        [sys.executable, "-m", "modelkitfs.cli", "cat", "--plain-http", reference, "model.bin"],
        capture_output=True,
        timeout=120,
        env={**os.environ, "MODELKITFS_CACHE_DIR": str(cache)},
    )
    assert catted.returncode == 0 and catted.stdout == MODEL, catted.stderr
    proxy.reset()
    copied = run_cli("cp", "--plain-http", reference, "model.bin", str(tmp_path), cache=cache)
    assert copied.returncode == 0 and copied.stdout == "", copied.stderr
    assert (tmp_path / "model.bin").read_bytes() == MODEL
    assert proxy.blob_bytes < MiB  # the same cache: the model is not downloaded again
    refused = run_cli("cp", "--plain-http", reference, "data", str(tmp_path / "d"), cache=cache)
    assert one_line_error(refused) == (
        f"'data' of {reference} is a folder: copy it with 'modelkitfs cp -r'"
    )
    tree = run_cli("cp", "-r", "--plain-http", reference, "data", str(tmp_path / "d"), cache=cache)
    assert tree.returncode == 0, tree.stderr
    copied_files = sorted(p.relative_to(tmp_path / "d") for p in (tmp_path / "d").rglob("*"))
    assert copied_files == [Path("sub"), Path("sub/more.csv"), Path("train.csv")]
    for name in ("train.csv", "sub/more.csv"):
        assert (tmp_path / "d" / name).read_bytes() == (source / "data" / name).read_bytes()
    missing = run_cli("cat", "--plain-http", reference, "data/none.csv", cache=cache)
    assert one_line_error(missing) == f"{reference} has no 'data/none.csv'"


def test_ls_recursive(kit: tuple[str, Path], tmp_path: Path) -> None:
    reference, _ = kit
    listed = run_cli("ls", "-R", "--plain-http", reference, cache=tmp_path / "cache")
    assert listed.stdout.splitlines() == [
        *(".:", "Kitfile", "data/", "model.bin", ""),
        *("data:", "sub/", "train.csv", ""),
        *("data/sub:", "more.csv"),
    ]
    flat = json.loads(
        run_cli("ls", "-R", "--json", "--plain-http", reference, "data", cache=tmp_path).stdout
    )
    assert [entry["path"] for entry in flat] == ["data/sub", "data/train.csv", "data/sub/more.csv"]


def test_ls_long_list_and_cache_ls_show_what_is_cached(
    kit: tuple[str, Path], tmp_path: Path
) -> None:
    reference, _ = kit
    cache = tmp_path / "cache"
    assert run_cli("list", cache=cache).stdout == f"no kits in the cache {cache}\n"
    before = run_cli("ls", "-l", "--plain-http", reference, cache=cache).stdout.splitlines()
    assert before[2] == f"-rw-r--r--      {len(MODEL):,}        0 B model.bin"
    assert (
        run_cli("cp", "--plain-http", reference, "model.bin", str(tmp_path), cache=cache).returncode
        == 0
    )
    after = run_cli("ls", "-l", "--plain-http", reference, cache=cache).stdout.splitlines()
    assert after[2] == f"-rw-r--r--      {len(MODEL):,}    2.0 MiB model.bin"
    kits = json.loads(run_cli("list", "--json", cache=cache).stdout)
    assert len(kits) == 1 and kits[0]["reference"] == reference
    assert kits[0]["manifest"].startswith("sha256:") and kits[0]["cached"] >= len(MODEL)
    table = run_cli("list", cache=cache).stdout.splitlines()
    assert table[0].split() == ["REFERENCE", "DIGEST", "SIZE", "CACHED", "LAST", "USED"]
    assert table[1].startswith(f"{reference}  {kits[0]['manifest'][:19]}")
    blobs = json.loads(run_cli("cache", "ls", "--json", cache=cache).stdout)
    model = next(blob for blob in blobs if blob["size"] and blob["size"] > MiB)
    assert model["cached"] == model["size"] and model["state"] == "verified"
    assert model["kits"] == [
        {
            "reference": reference,
            "manifest": kits[0]["manifest"],
            "type": "model",
            "path": "model.bin",
        }
    ]
    rows = run_cli("cache", "ls", cache=cache).stdout.splitlines()
    assert rows[0].split()[-2:] == ["KIT", "PATH"]
    assert any(row.endswith(f"{reference}  model.bin") for row in rows)


def test_prefetch_in_a_pipe_prints_the_summary_only(kit: tuple[str, Path], tmp_path: Path) -> None:
    reference, _ = kit
    cache = tmp_path / "cache"
    result = run_cli("prefetch", "--plain-http", reference, cache=cache)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.splitlines() == [
        f"prefetched {reference}: 2.0 MiB in 2 layers, verified, into {cache} (none of it was "
        f"cached; {result.stdout.split('cached; ')[1].split(' downloaded')[0]} downloaded)"
    ]
    again = run_cli("prefetch", "--plain-http", reference, cache=cache)
    assert "(2.0 MiB of it was cached already; 0 B downloaded)" in again.stdout


def test_prefetch_on_a_narrow_terminal_fits_it(kit: tuple[str, Path], tmp_path: Path) -> None:
    reference, _ = kit
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelkitfs.cli", "prefetch", "--plain-http", reference],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env={
            **os.environ,
            "MODELKITFS_CACHE_DIR": str(tmp_path / "cache"),
            "COLUMNS": "60",
            "TERM": "xterm",
        },
    )
    os.close(terminal)
    shown = read_terminal(controller)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    assert stdout.decode().startswith(f"prefetched {reference}: 2.0 MiB in 2 layers")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    lines = text.replace("\r", "\n").splitlines()
    finished = [line for line in lines if "cached and verified" in line]
    assert finished == [
        "layer 1/2 model model.bin (2.0 MiB) cached and verified",
        "layer 2/2 dataset data (4.0 KiB) cached and verified",
    ]
    assert all(len(line) <= 60 for line in lines), lines
