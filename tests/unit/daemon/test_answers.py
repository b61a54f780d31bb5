"""Asking a mount's daemon with a deadline: a question that never returns costs its asker the
deadline alone and the other questions nothing; a daemon that did not answer is described from
/proc (its pid by its title, among its owner's processes; whether it is stopped), with what to
do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from modelkitfs.daemon.answers import (
    Silence,
    ask,
    ask_all,
    daemons,
    process_state,
    silence,
)
from modelkitfs.primitives.calls import NoAnswer
from modelkitfs.primitives.mountinfo import MountEntry
from tests.support.waiting import wait_for

SHORT = 0.01  # a deadline the stuck questions below always miss
MOUNTPOINT = "/mnt/answers-test"
TITLE = f"modelkitfs: registry.example/team/llm:v1 on {MOUNTPOINT}"


def kit_mount(owner: int | None) -> MountEntry:
    return MountEntry(
        MOUNTPOINT, "fuse.modelkitfs", "modelkitfs:registry.example/team/llm:v1", "0:99", owner
    )


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """What stuck questions wait for; set at the end whatever happens."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def titled() -> Iterator[subprocess.Popen[bytes]]:
    """A process titled as the daemon of :data:`MOUNTPOINT`, running until the test ends (then
    continued and ended, whatever the test did to it)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import setproctitle, sys; setproctitle.setproctitle({TITLE!r}); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        wait_for(lambda: title_of(process.pid) == TITLE, "the process to take its title")
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait()


def title_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().rstrip(b"\0").decode()
    except OSError:
        return ""


def test_a_question_that_blocks_times_out_then_answers_once_released(
    release: threading.Event,
) -> None:
    asked: list[int] = []

    def stuck() -> str:
        asked.append(1)
        release.wait()
        return "stats"

    with pytest.raises(NoAnswer) as raised:
        ask("asking /mnt/a how it does", stuck, SHORT)
    assert str(raised.value) == f"asking /mnt/a how it does: no answer within {SHORT:g} s"
    with pytest.raises(NoAnswer) as again:  # still stuck: no second thread on the pile
        ask("asking /mnt/a how it does", stuck, 60)
    assert str(again.value) == "asking /mnt/a how it does: still no answer"
    assert asked == [1]
    release.set()

    def answers_now() -> bool:
        try:
            return ask("asking /mnt/a how it does", stuck, 60) == "stats"
        except NoAnswer:  # the stuck call has not returned yet
            return False

    wait_for(answers_now, "the question to be answered once its daemon goes on")
    assert asked == [1, 1]  # asked anew, and answered


def test_one_question_without_an_answer_costs_the_others_nothing(
    release: threading.Event,
) -> None:
    def gone() -> bytes:
        raise OSError(107, "Transport endpoint is not connected")

    found = ask_all(
        [
            ("asking /mnt/stopped", lambda: release.wait()),
            ("asking /mnt/serving", lambda: {"fetched_bytes": 7}),
            ("asking /mnt/dead", gone),
        ],
        SHORT,
    )
    with pytest.raises(NoAnswer):
        found[0].unwrap()
    assert found[1].unwrap() == {"fetched_bytes": 7}
    with pytest.raises(OSError) as dead:
        found[2].unwrap()
    assert dead.value.errno == 107


def test_the_state_of_a_process_from_proc(titled: subprocess.Popen[bytes]) -> None:
    assert process_state(titled.pid) == "running"  # asleep in a read: live, not stopped
    os.kill(titled.pid, signal.SIGSTOP)
    wait_for(lambda: process_state(titled.pid) == "stopped", "the process to stop")
    os.kill(titled.pid, signal.SIGCONT)
    wait_for(lambda: process_state(titled.pid) == "running", "the process to go on")
    titled.kill()
    titled.wait()
    assert process_state(titled.pid) == ""


def test_a_daemon_is_found_by_its_title_among_its_owners_processes(
    titled: subprocess.Popen[bytes],
) -> None:
    assert daemons(kit_mount(os.getuid())) == [titled.pid]
    assert daemons(kit_mount(None)) == [titled.pid]  # a mount that names no owner
    assert daemons(kit_mount(os.getuid() + 1)) == []  # a title is only a name: not another's
    other = MountEntry(MOUNTPOINT, "fuse.sshfs", "modelkitfs:registry.example/team/llm:v1", "0:9")
    assert daemons(other) == []


def test_a_stopped_daemon_is_named_with_what_to_do(titled: subprocess.Popen[bytes]) -> None:
    os.kill(titled.pid, signal.SIGSTOP)
    wait_for(lambda: process_state(titled.pid) == "stopped", "the process to stop")
    quiet = silence(kit_mount(os.getuid()), 5)
    assert (quiet.pid, quiet.state) == (titled.pid, "stopped")
    assert quiet.describe() == (
        f"{MOUNTPOINT} does not answer: its daemon (pid {titled.pid}) is stopped; resume it "
        f"with 'kill -CONT {titled.pid}', or unmount it with 'modelkitfs umount --lazy "
        f"{MOUNTPOINT}'"
    )


def test_what_to_do_when_the_daemon_runs_or_is_unknown() -> None:
    mount = kit_mount(0)
    assert Silence(mount, 5, 12, "running").advice == (
        "its daemon (pid 12) did not answer within 5 s; see its log, or unmount it with "
        f"'modelkitfs umount --lazy {MOUNTPOINT}' and end it with 'kill 12'"
    )
    assert Silence(mount, 5, 12, "traced").advice == (
        "its daemon (pid 12) is stopped by a debugger or tracer; let it go on there, or "
        f"unmount it with 'modelkitfs umount --lazy {MOUNTPOINT}'"
    )
    assert Silence(mount, 2.5, None, "").advice == (
        "its daemon did not answer within 2.5 s; unmount it with "
        f"'modelkitfs umount --lazy {MOUNTPOINT}'"
    )
    other = MountEntry("/mnt/remote", "fuse.sshfs", "host:/", "0:9", 0)
    assert Silence(other, 5, None, "").advice.endswith("'fusermount3 -u -z /mnt/remote'")
    root = MountEntry("/", "ext4", "/dev/vda1", "254:1", None)
    assert Silence(root, 5, None, "").advice == "its file system did not answer within 5 s"
