"""Run a FUSE session: mount, tune the kernel's side, serve until unmounted or told to stop."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import pyfuse3
import trio

from modelkitfs.primitives.mountinfo import mount_table

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024
MAX_BACKGROUND = 64
FUSECTL = "/sys/fs/fuse/connections"
WORKER_TASKS = (8, 128)
TUNE_ATTEMPTS = 20
FUSE_DEVICE = "/dev/fuse"


def mount_options(fsname: str, allow_other: bool) -> set[str]:
    options = set(pyfuse3.default_options) | {"ro", f"fsname={fsname}", "subtype=modelkitfs"}
    if allow_other:
        options.add("allow_other")
    return options


async def tune_connection(mountpoint: str) -> None:
    """Ask the kernel for big readahead and more requests in flight; skipped where not allowed.

    The default 128 KiB readahead caps sequential reads and turns mmap page faults into many
    small requests (README, Speed). The kernel sets the mount's readahead from the FUSE
    INIT reply, so this runs once the session is serving, and checks that the value held. A
    file takes its readahead size when it is opened, so the mount is announced ready only
    after this."""
    device = _mount_device(mountpoint)
    if device is None:
        return
    _mount_fusectl()
    major, minor = device
    settings = {
        Path(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb"): READ_AHEAD_KB,
        Path(f"/sys/fs/fuse/connections/{minor}/max_background"): MAX_BACKGROUND,
    }
    for _ in range(TUNE_ATTEMPTS):
        await trio.sleep(0.05)
        pending = False
        for path, value in settings.items():
            try:
                if path.read_text().strip() != str(value):
                    path.write_text(str(value))
                    pending = True
            except OSError as exc:
                log.debug("cannot set %s: %s", path, exc)
        if not pending:
            return


def _mount_fusectl() -> None:
    """``max_background`` lives in the fusectl file system, which some systems leave unmounted;
    root may mount it (as ``mount -t fusectl`` would), nobody else can."""
    connections = Path(FUSECTL)
    try:
        if os.geteuid() != 0 or not connections.is_dir() or any(connections.iterdir()):
            return
        subprocess.run(
            ["mount", "-t", "fusectl", "fusectl", FUSECTL], capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("cannot mount fusectl: %s", exc)


def _mount_device(mountpoint: str) -> tuple[int, int] | None:
    """The mount's device numbers, from mountinfo: a stat() of the mountpoint from the
    daemon itself would wait on the very request loop that has not started yet."""
    matching = [entry for entry in mount_table() if entry.mountpoint == mountpoint]  # no stat
    if not matching:
        return None
    major, _, minor = matching[-1].device.partition(":")  # the last is the topmost
    return int(major), int(minor)


async def serve(
    operations: pyfuse3.Operations,
    mountpoint: str,
    options: Iterable[str],
    on_ready: Callable[[], None],
    background: Iterable[Callable[[], Awaitable[None]]] = (),
) -> None:
    """Mount ``operations`` at ``mountpoint`` and serve requests until the filesystem is
    unmounted or SIGINT/SIGTERM arrives; always leave nothing mounted behind. ``background``:
    work that runs as long as the session (pushes into the kernel's page cache)."""
    pyfuse3.init(operations, mountpoint, set(options))

    async def tune_then_announce() -> None:
        await tune_connection(mountpoint)
        on_ready()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal)
            nursery.start_soon(tune_then_announce)
            for work in background:
                nursery.start_soon(work)
            await pyfuse3.main(*WORKER_TASKS)
            nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=True)


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def kernel_refusal(mountpoint: str, exc: BaseException) -> str:
    """Why the kernel refused the mount, told apart by what can be checked: no /dev/fuse, a
    /dev/fuse this user cannot open, else (the usual case in a container) no CAP_SYS_ADMIN."""
    if not os.path.exists(FUSE_DEVICE):
        return (
            f"cannot mount {mountpoint}: {FUSE_DEVICE} does not exist; install fuse3 "
            "(apt-get install fuse3), or give a container --device /dev/fuse"
        )
    try:
        os.close(os.open(FUSE_DEVICE, os.O_RDWR))
    except OSError as error:
        return (
            f"cannot mount {mountpoint}: {FUSE_DEVICE} cannot be opened ({error.strerror}); "
            "run as root or as a member of the group that owns it"
        )
    return (
        f"cannot mount {mountpoint}: permission denied by the kernel ({exc}), mounting needs "
        "CAP_SYS_ADMIN: run as root, give a container --cap-add SYS_ADMIN --device /dev/fuse, "
        "or read without mounting (modelkitfs cat, modelkitfs cp, modelkitfs.open())"
    )
