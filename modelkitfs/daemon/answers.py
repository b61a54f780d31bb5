"""Asking a mount's daemon something through its folder, from another process, within a deadline.

Whatever a command asks of a mounted folder (the statistics' extended attribute, a ``stat``, a
listing, even resolving a path that passes through it) waits in the kernel until the folder's
daemon answers, and a daemon that is stopped (SIGSTOP, a debugger, a profiler) or wedged answers
never: ``modelkitfs mounts`` hung on one such mount among many. So every such question is asked
here, in a thread of its own (:mod:`modelkitfs.primitives.calls`), waited for at most
:data:`ANSWER_TIMEOUT`, every mount at once; a thread left waiting ends with its process (the
kernel drops a request its daemon has not read when the asker dies; one it has read holds the
asker's end until answered or until the mount's connection is gone).

Only the deadline tells whether a daemon answers: a process that runs may still be wedged. Once
one has not, what needs no answer from it says why, in one line with what to do: its daemon,
found by its process title among the mount owner's processes, and that process's state in
/proc (stopped, or stopped by a tracer).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import outcome

from modelkitfs.daemon.process import process_title
from modelkitfs.daemon.service import with_kits
from modelkitfs.fuse.operations import STATS_XATTR
from modelkitfs.primitives.calls import Call, Calls, NoAnswer
from modelkitfs.primitives.mountinfo import MountEntry, mount_table

T = TypeVar("T")

ANSWER_TIMEOUT = 5.0  # seconds a mount's daemon has to answer a command (README: mounts)
FSTYPE = "modelkitfs"  # the mounts' subtype: fuse.modelkitfs in /proc/mounts
# What a FUSE mount whose daemon died answers (the first calls after the death: ECONNABORTED).
DEAD_MOUNT = (errno.ENOTCONN, errno.ECONNABORTED)

_calls = Calls()


def ask(what: str, function: Callable[[], T], seconds: float = ANSWER_TIMEOUT) -> T:
    """``function()``'s result or error if it returns within ``seconds``, else
    :class:`~modelkitfs.primitives.calls.NoAnswer`; ``what`` names the question (one still
    unanswered from before fails at once)."""
    return ask_all([(what, function)], seconds)[0].unwrap()


def ask_all(
    questions: Sequence[tuple[str, Callable[[], T]]], seconds: float = ANSWER_TIMEOUT
) -> list[outcome.Outcome[T]]:
    """Each ``(what, function)`` asked at once, every answer waited for until the same
    deadline: each one's result or error (:class:`NoAnswer` where none came), in order."""
    started = [
        outcome.capture(_calls.start, what, lambda _, function=function: function(), what)
        for what, function in questions
    ]
    deadline = time.monotonic() + seconds

    def answer(call: Call[T]) -> T:
        try:
            return _calls.wait(call, max(0.0, deadline - time.monotonic()))
        except NoAnswer:  # named with the deadline asked for, not what was left of it
            raise NoAnswer(f"{call.what}: no answer within {seconds:g} s") from None

    return [
        outcome.capture(answer, call.unwrap()) if isinstance(call, outcome.Value) else call
        for call in started
    ]


@dataclass(frozen=True)
class Silence:
    """A mount whose daemon did not answer within ``seconds``, as /proc tells of it."""

    mount: MountEntry
    seconds: float
    pid: int | None  # its daemon, when exactly one process is
    state: str  # that process's: "stopped", "traced" (by a debugger), "running" or ""

    @property
    def advice(self) -> str:
        """Why, and what to do: ``its daemon (pid 12) is stopped; resume it with ...``."""
        mountpoint = self.mount.mountpoint
        if self.mount.fstype == f"fuse.{FSTYPE}":
            detach = f"'modelkitfs umount --lazy {mountpoint}'"
        elif self.mount.fstype.startswith("fuse"):
            detach = f"'fusermount3 -u -z {mountpoint}'"
        else:  # not one of a daemon's: what hangs there is for its administrator to see
            return f"its file system did not answer within {self.seconds:g} s"
        if self.pid is None:
            return f"its daemon did not answer within {self.seconds:g} s; unmount it with {detach}"
        daemon = f"its daemon (pid {self.pid})"
        if self.state == "stopped":
            return (
                f"{daemon} is stopped; resume it with 'kill -CONT {self.pid}', or unmount it "
                f"with {detach}"
            )
        if self.state == "traced":
            return (
                f"{daemon} is stopped by a debugger or tracer; let it go on there, or unmount "
                f"it with {detach}"
            )
        return (
            f"{daemon} did not answer within {self.seconds:g} s; see its log, or unmount it "
            f"with {detach} and end it with 'kill {self.pid}'"
        )

    def describe(self) -> str:
        """The mount, then :attr:`advice`, for a line that names no mount of its own."""
        return f"{self.mount.mountpoint} does not answer: {self.advice}"


def silence(mount: MountEntry, seconds: float = ANSWER_TIMEOUT) -> Silence:
    """What /proc tells of ``mount``'s daemon, which did not answer (nothing here asks it)."""
    pids = daemons(mount)
    pid = pids[0] if len(pids) == 1 else None
    return Silence(mount, seconds, pid, process_state(pid) if pid is not None else "")


def daemons(mount: MountEntry) -> list[int]:
    """The processes of the mount's owner titled as its daemon (``modelkitfs: REFERENCE on
    MOUNTPOINT``); a title is only a name, so one of another user never counts."""
    if mount.fstype != f"fuse.{FSTYPE}":
        return []
    title = process_title(mount.source.removeprefix(f"{FSTYPE}:"), mount.mountpoint).encode()
    found = []
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (process / "cmdline").read_bytes().rstrip(b"\0") != title:
                continue
            if mount.owner is None or _real_uid(process) == mount.owner:
                found.append(int(process.name))
    return sorted(found)


def active_mounts(seconds: float = ANSWER_TIMEOUT) -> list[dict[str, Any]]:
    """The modelkitfs mounts of this machine, with what each daemon reports of itself
    (reference, bytes fetched, cache hits, pid, log, cache); ``"dead": True`` where the daemon
    has stopped; ``"answering": False`` where it did not answer within ``seconds`` (all are
    asked at once), with ``problem``, why and what to do, and its ``pid`` when known."""
    mounted = [entry for entry in mount_table() if entry.fstype == f"fuse.{FSTYPE}"]
    answers = ask_all(
        [
            (f"asking {m.mountpoint} how it does", partial(_statistics, m.mountpoint))
            for m in mounted
        ],
        seconds,
    )
    found = []
    for mount, answer in zip(mounted, answers, strict=True):
        entry: dict[str, Any] = {
            "mountpoint": mount.mountpoint,
            "reference": mount.source.removeprefix(f"{FSTYPE}:"),
        }
        try:
            entry.update(answer.unwrap())
            entry.update(dead=False, answering=True)
        except NoAnswer:
            quiet = silence(mount, seconds)
            entry.update(dead=False, answering=False, problem=quiet.advice)
            if quiet.pid is not None:
                entry["pid"] = quiet.pid
        except OSError as exc:
            dead = exc.errno in DEAD_MOUNT
            entry.update(dead=dead, answering=not dead)
        found.append(entry)
    return found


def _statistics(mountpoint: str) -> dict[str, Any]:
    """What the daemon at ``mountpoint`` reports of itself (asked through the folder)."""
    stats = json.loads(os.getxattr(mountpoint, STATS_XATTR))
    return with_kits(stats, os.stat(mountpoint).st_uid)


def process_state(pid: int) -> str:
    """``stopped`` (SIGSTOP, Ctrl-Z), ``traced`` (stopped by a debugger), ``running`` (any
    other state of a live process), or "" when there is no such process (or only its zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    state = stat.rpartition(")")[2].split()[0]  # the name before it may hold spaces and ')'
    return {"T": "stopped", "t": "traced", "Z": "", "X": ""}.get(state, "running")


def _real_uid(process: Path) -> int | None:
    for line in (process / "status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None
