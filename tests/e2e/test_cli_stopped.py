"""A mount whose daemon is stopped (SIGSTOP: a debugger, a profiler) costs its own row alone:
``mounts`` lists the others with their figures and it as not answering, with its pid and what
to do; ``mount`` on it says so in one line; ``umount`` takes it off; completion still names it.
Every daemon stopped here is continued whatever the test does."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Mounts, daemon_pid, running
from tests.support.clirun import assert_one_line_error, run_cli
from tests.support.kitbuilder import build_modelkit
from tests.support.waiting import wait_for

WEIGHTS = b"weights of the stopped-daemon tests"


@pytest.fixture(scope="module")
def small_kit(tmp_path_factory: pytest.TempPathFactory, publish) -> str:
    source = tmp_path_factory.mktemp("stopped")
    (source / "model.bin").write_bytes(WEIGHTS)
    kitfile = {"manifestVersion": "1.0.0", "model": {"name": "m", "path": "model.bin"}}
    return publish(build_modelkit(source, kitfile), "cli/stopped")


def state_of(pid: int) -> str:
    """The process's state letter from /proc (T: stopped), "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The daemon ``pid`` stopped for the block, continued after it, also after a failure."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: state_of(pid) == "T", f"daemon {pid} to stop")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
        wait_for(lambda: state_of(pid) != "T", f"daemon {pid} to go on")


def mounted(path: Path) -> bool:
    """Whether ``path`` is in the mount table (read without asking any mount)."""
    with open("/proc/self/mountinfo") as table:
        return any(line.split()[4] == str(path) for line in table)


def listed(cache: Path) -> dict[str, dict]:
    result = run_cli("mounts", "--json", cache=cache)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return {row["mountpoint"]: row for row in json.loads(result.stdout)}


def test_mounts_lists_a_stopped_daemon_as_not_answering_and_the_others_in_full(
    small_kit: str, proxy, mounts: Mounts, tmp_path: Path
) -> None:
    healthy = mounts.mount(small_kit, name="healthy")
    assert (healthy / "model.bin").read_bytes() == WEIGHTS  # fetched: figures to show
    quiet = mounts.mount(small_kit, name="quiet")
    assert (quiet / "model.bin").read_bytes() == WEIGHTS
    healthy_pid, quiet_pid = daemon_pid(healthy), daemon_pid(quiet)
    reference = f"{proxy.address}/{small_kit}"
    script = run_cli("completion", "bash", cache=tmp_path).stdout
    with stopped(quiet_pid):
        rows = listed(tmp_path)
        table = run_cli("mounts", cache=tmp_path)
        completion = subprocess.run(
            [
                "bash",
                "-c",
                f"{script}\nCOMP_WORDS=(modelkitfs umount {quiet.parent}/qu); COMP_CWORD=2; "
                '_shtab_modelkitfs; echo "${COMPREPLY[*]}"',
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,  # only so that a hang fails the test rather than the run
        )
    advice = (
        f"its daemon (pid {quiet_pid}) is stopped; resume it with 'kill -CONT {quiet_pid}', "
        f"or unmount it with 'modelkitfs umount --lazy {quiet}'"
    )
    assert rows[str(quiet)] == {
        "mountpoint": str(quiet),
        "reference": reference,
        "dead": False,
        "answering": False,
        "problem": advice,
        "pid": quiet_pid,
    }
    assert rows[str(healthy)]["answering"] is True and rows[str(healthy)]["dead"] is False
    assert rows[str(healthy)]["pid"] == healthy_pid
    assert rows[str(healthy)]["fetched_bytes"] >= len(WEIGHTS)  # its layer, from the registry
    assert rows[str(healthy)]["cache_dir"] == str(mounts.cache_dir)
    assert table.returncode == 0 and "Traceback" not in table.stderr, table.stderr
    lines = {line.split()[0]: line for line in table.stdout.splitlines()}
    assert f" {quiet_pid} " in lines[str(quiet)]
    assert f"not answering: {advice}" in lines[str(quiet)]
    assert f" {healthy_pid} " in lines[str(healthy)] and " serving " in lines[str(healthy)]
    assert completion.stdout.split() == [str(quiet)]  # from the mount table: nothing asked

    rows = listed(tmp_path)  # continued: the same daemon answers on the same mount
    assert rows[str(quiet)]["answering"] is True and rows[str(quiet)]["pid"] == quiet_pid
    assert rows[str(healthy)]["answering"] is True and rows[str(healthy)]["pid"] == healthy_pid
    assert (quiet / "model.bin").read_bytes() == WEIGHTS


HOLDER = """import sys
with open(sys.argv[1], "rb", buffering=0) as held:
    print(held.read(7).decode(), flush=True)
    sys.stdin.readline()
    print(held.read().decode(), flush=True)
"""


@contextlib.contextmanager
def holding(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process of its own holding ``path`` open, having read its first word: it reads the
    rest when told (a line on its standard input). Not this process: one that holds a file of a
    stopped mount hangs in its next fork, whose child closes the file and waits for the daemon
    to answer that close."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == WEIGHTS.decode()[:7] + "\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_mount_umount_and_a_lazy_umount_of_a_stopped_daemons_mount(
    small_kit: str, proxy, mounts: Mounts, tmp_path: Path
) -> None:
    quiet = mounts.mount(small_kit, name="quiet")
    pid = daemon_pid(quiet)
    cache = mounts.cache_dir
    with holding(quiet / "model.bin") as holder:  # keeps the mount busy
        with stopped(pid):
            # A name inside it the kernel has never looked up: only the daemon could answer.
            refused = run_cli(
                "mount",
                "--plain-http",
                f"{proxy.address}/{small_kit}",
                str(quiet / "sub"),
                cache=cache,
            )
            assert_one_line_error(
                refused,
                f"cannot use mountpoint {quiet}/sub: {quiet} does not answer: its daemon "
                f"(pid {pid}) is stopped; resume it with 'kill -CONT {pid}', or unmount it "
                f"with 'modelkitfs umount --lazy {quiet}'",
            )
            assert_one_line_error(
                run_cli("umount", str(quiet), cache=cache),
                f"{quiet} is busy: pid {holder.pid} (",
                f"detach it now with 'modelkitfs umount --lazy {quiet}'",
            )
            detached = run_cli("umount", "--lazy", str(quiet), cache=cache)
            assert detached.returncode == 0, detached.stderr
            assert not mounted(quiet)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go on\n")
        holder.stdin.flush()
        # Continued: the detached mount serves its open file to the end.
        assert holder.stdout.readline() == WEIGHTS.decode()[7:] + "\n"
    wait_for(lambda: not running(pid), "the daemon to end with its mount's last file")

    again = mounts.mount(small_kit, name="again")
    pid = daemon_pid(again)
    with stopped(pid):
        result = run_cli("umount", str(again), cache=cache)  # not busy: taken off at once
        assert result.returncode == 0, result.stderr
        assert not mounted(again)
    wait_for(lambda: not running(pid), "the daemon to end once it goes on without its mount")
