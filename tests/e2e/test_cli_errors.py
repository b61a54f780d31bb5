"""Every bad input a person types is one line naming what was wrong and what to do, exit 1, no
traceback, nothing left mounted: usage errors, option values, references, caches, proxies,
registries that never answer; and output into a pipe that closes ends quietly."""

from __future__ import annotations

import os
import pty
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Mounts
from tests.support.clirun import one_line_error, read_terminal, run_cli
from tests.support.kitbuilder import build_modelkit
from tests.support.registry_server import free_port


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, publish, proxy) -> str:
    source = tmp_path_factory.mktemp("errors")
    (source / "model.bin").write_bytes(b"weights")
    (source / "data").mkdir()
    (source / "data/train.csv").write_text("x\n")
    kitfile = {
        "manifestVersion": "1.0.0",
        "model": {"name": "m", "path": "model.bin"},
        "datasets": [{"name": "train", "path": "data"}],
    }
    return f"{proxy.address}/{publish(build_modelkit(source, kitfile), 'cli/errors')}"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["mount"],
            "the following arguments are required: REFERENCE, MOUNTPOINT; "
            "see 'modelkitfs mount --help'",
        ),
        (["nope"], "argument COMMAND: invalid choice: 'nope'"),
        (
            ["mount", "-l", "q=4", "r.example/k:v1", "/mnt"],
            "-l does nothing for mount: -l is ls's --long; a ModelKit index entry is picked "
            "with --label; see 'modelkitfs mount --help'",
        ),
        (
            ["inspect", "--verify", "full", "r.example/k:v1"],
            "--verify does nothing for inspect: it fetches no layer, so there is nothing to "
            "verify; see 'modelkitfs inspect --help'",
        ),
        (
            ["cache", "ls", "--max-size", "5G"],
            "--max-size does nothing for cache ls: only 'modelkitfs cache prune' takes it; "
            "see 'modelkitfs cache ls --help'",
        ),
        (
            ["ls", "--proxy", "notaurl", "r.example/k:v1"],
            "--proxy 'notaurl' is not a proxy URL: give http://HOST:PORT (or https://, "
            "socks5://), with user:password@ before the host if it asks for them",
        ),
        (
            ["prefetch", "--cache-max-size", "-5G", "r.example/k:v1"],
            "invalid size '-5G': give a number with an optional K, M, G or T suffix (e.g. 20G)",
        ),
        (
            ["ls", "-f", "dataset", "r.example/k:v1"],
            "--filter 'dataset': 'dataset' is not a type; did you mean datasets? types are "
            "kitfile, model, datasets, code, prompts, docs, mcpservers "
            "(TYPES[:IDS], e.g. -f model,datasets:train)",
        ),
        (
            ["ls", "--timeout", "0", "r.example/k:v1"],
            "--timeout must be a positive number of seconds, not '0'",
        ),
        (
            ["inspect", "https://r.example/team/llm:v1"],
            "'https://r.example/team/llm:v1' is a URL, not a reference: give "
            "r.example/team/llm:v1 (a reference names no scheme)",
        ),
    ],
)
def test_bad_input_is_one_line(args: list[str], line: str, tmp_path: Path) -> None:
    shown = one_line_error(run_cli(*args, cache=tmp_path / "cache"))
    assert shown.startswith(line), shown


def test_a_reference_without_registry_is_named_as_written(tmp_path: Path) -> None:
    env = {"KITOPS_HOME": str(tmp_path / "kitops")}
    shown = one_line_error(run_cli("ls", "team/llm:v1", cache=tmp_path / "cache", env=env))
    assert shown.startswith("localhost/team/llm:v1 is not in kit's local storage")


@pytest.mark.parametrize(
    "command",
    [["ls", "{kit}"], ["inspect", "{kit}"], ["prefetch", "{kit}"], ["cat", "{kit}", "model.bin"]]
    + [["cache", action] for action in ("info", "ls", "verify", "prune", "clear")]
    + [["list"]],
)
def test_a_cache_folder_that_is_a_file(command: list[str], kit: str, tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("not a folder")
    network = ["--plain-http"] if "{kit}" in command else []
    for cache in (file, file / "below"):
        args = [*(word.format(kit=kit) for word in command), *network, "--cache-dir", str(cache)]
        shown = one_line_error(run_cli(*args, cache=tmp_path / "cache"))
        assert shown == (
            f"cache {cache} cannot be a folder: {file} is a file; give --cache-dir a folder "
            "(or set $MODELKITFS_CACHE_DIR)"
        )


def test_an_unreachable_proxy_is_named_as_the_proxy(kit: str, tmp_path: Path) -> None:
    port = free_port()
    shown = one_line_error(
        run_cli(
            "ls",
            "--plain-http",
            "--timeout",
            "3",
            "--proxy",
            f"http://user:pw@127.0.0.1:{port}",
            kit,
            cache=tmp_path / "cache",
        )
    )
    assert shown == (
        f"cannot reach proxy 127.0.0.1:{port} (connection refused): check --proxy (or "
        "$HTTPS_PROXY) and that the proxy is running"
    )


@pytest.fixture
def silent_registry() -> Iterator[str]:
    """A registry address that takes connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.05)  # a blocked accept() would not see the listener closed
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()
    for connection in held:
        connection.close()
    thread.join(5)


def test_a_registry_that_never_answers_says_so_within_the_timeout(
    silent_registry: str, tmp_path: Path
) -> None:
    result = run_cli(
        "ls", "--plain-http", "--timeout", "2", f"{silent_registry}/cli/k:v1", cache=tmp_path
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"modelkitfs: error: registry {silent_registry} sent no answer")
    assert "within 2 s (--timeout)" in lines[-1]
    assert all(line.startswith("modelkitfs: warning: ") for line in lines[:-1])


def test_output_into_a_closed_pipe_ends_quietly(kit: str, tmp_path: Path) -> None:
    for args in (["completion", "bash"], ["cat", "--plain-http", kit, "model.bin"]):
        reader, writer = os.pipe()
        os.close(reader)  # whoever reads has gone before the first byte, as 'head' may
        process = subprocess.run(
            [sys.executable, "-m", "modelkitfs.cli", *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, "MODELKITFS_CACHE_DIR": str(tmp_path / "cache")},
        )
        os.close(writer)
        assert process.stderr == "", args
        assert process.returncode == 128 + signal.SIGPIPE, args


def test_a_filter_that_matches_nothing_warns_and_lists_the_entries(
    kit: str, tmp_path: Path
) -> None:
    warning = (
        f"modelkitfs: warning: --filter model:nope matches nothing in {kit}, so nothing of it "
        "is shown; its entries are model m (model.bin), datasets train (data) (ids are names "
        "or paths exactly as the Kitfile writes them)"
    )
    listed = run_cli("ls", "--plain-http", "-f", "model:nope", kit, cache=tmp_path / "cache")
    assert listed.returncode == 0 and listed.stdout == ""
    assert listed.stderr.splitlines() == [warning]
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    mounted = run_cli(
        "mount", "--plain-http", "-f", "model:nope", kit, str(mountpoint), cache=tmp_path / "c"
    )
    try:
        assert mounted.returncode == 0 and mounted.stderr.splitlines() == [warning]
        assert os.listdir(mountpoint) == []
    finally:
        assert run_cli("umount", str(mountpoint), cache=tmp_path).returncode == 0


def test_cache_clear_names_the_mounts_using_it(kit: str, mounts: Mounts, tmp_path: Path) -> None:
    mounted = mounts.mount(kit.partition("/")[2])
    cache = mounts.cache_dir
    shown = one_line_error(run_cli("cache", "clear", cache=cache))
    assert shown == (
        f"cache {cache} is used by 1 mount(s): {mounted}; their next reads would download "
        "again: add --yes to clear it anyway"
    )
    assert (mounted / "model.bin").read_bytes() == b"weights"
    cleared = run_cli("cache", "clear", "--yes", cache=cache)
    assert cleared.returncode == 0 and cleared.stdout == f"cleared {cache}\n"
    assert (mounted / "model.bin").read_bytes() == b"weights"


def test_cache_prune_says_what_it_prunes_to(kit: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert run_cli("ls", "--plain-http", kit, cache=cache).returncode == 0
    pruned = run_cli("cache", "prune", cache=cache)
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith(f"cache {cache} now holds ")
    assert pruned.stdout.rstrip().endswith(": the default cap, half its file system)")
    capped = run_cli("cache", "prune", "--max-size", "1G", cache=cache)
    assert capped.stdout.rstrip().endswith("(pruned to 1.0 GiB: --max-size 1G)")


def test_mount_in_the_foreground_says_when_it_is_ready(kit: str, tmp_path: Path) -> None:
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "modelkitfs.cli", "mount", "--foreground", "--plain-http"),
            kit,
            str(mountpoint),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MODELKITFS_CACHE_DIR": str(tmp_path / "cache")},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line == f"mounted {kit} at {mountpoint}; Ctrl-C to unmount\n"
        assert (mountpoint / "model.bin").read_bytes() == b"weights"
        process.send_signal(signal.SIGINT)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not os.path.ismount(mountpoint)
    assert "Traceback" not in (process.stderr.read() if process.stderr else "")


def test_a_terminal_is_told_the_command_waits_for_the_registry(
    silent_registry: str, tmp_path: Path
) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "modelkitfs.cli", "ls", "--plain-http", "--timeout", "3"),
            f"{silent_registry}/cli/k:v1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env={**os.environ, "MODELKITFS_CACHE_DIR": str(tmp_path / "cache")},
    )
    os.close(terminal)
    shown = read_terminal(controller)
    assert process.wait(60) == 1
    lines = shown.decode().splitlines()
    waiting = f"modelkitfs: waiting for registry {silent_registry} (up to 3 s, --timeout)..."
    assert waiting in lines  # once, within a second, before the timeout ends the wait
    assert lines.count(waiting) == 1
    assert "sent no answer" in lines[-1]
