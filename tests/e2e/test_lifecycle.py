"""A mount's life through the real command: signals, a daemon that died, a busy folder."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MiB, Mounts, daemon_pid, running, write
from tests.support.clirun import assert_one_line_error, run_cli
from tests.support.kitbuilder import build_modelkit
from tests.support.waiting import wait_for

DATA = bytes(range(256)) * (4 * MiB // 256)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, publish) -> str:
    directory = tmp_path_factory.mktemp("lifecycle")
    write(directory / "weights.bin", DATA)
    kitfile = {"manifestVersion": "1.0.0", "model": {"path": "weights.bin"}}
    return publish(build_modelkit(directory, kitfile), "lifecycle/kit")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_unmounts_cleanly(kit: str, mounts: Mounts, signum: int) -> None:
    mountpoint = mounts.mount(kit)
    with open(mountpoint / "weights.bin", "rb") as f:
        assert f.read(MiB) == DATA[:MiB]
    pid = daemon_pid(mountpoint)
    os.kill(pid, signum)
    wait_for(lambda: not running(pid), "the daemon exits")
    assert not os.path.ismount(mountpoint)
    log = mounts.log
    assert f"received {signal.Signals(signum).name}: unmounting" in log
    assert f"unmounted {mountpoint}" in log
    # Nothing is left behind: the folder mounts again.
    assert (mounts.mount(kit, name="again") / "weights.bin").read_bytes() == DATA


def test_umount_cleans_up_after_a_dead_daemon(kit: str, mounts: Mounts, proxy) -> None:
    mountpoint = mounts.mount(kit)
    pid = daemon_pid(mountpoint)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not running(pid), "the daemon dies")
    with pytest.raises(OSError) as dead:
        os.stat(mountpoint)
    assert dead.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    reference = f"{proxy.address}/{kit}"
    cache = mounts.cache_dir
    assert_one_line_error(
        run_cli("mount", "--plain-http", reference, str(mountpoint), cache=cache),
        "dead mount",
        f"modelkitfs umount {mountpoint}",
    )
    result = run_cli("umount", str(mountpoint), cache=cache)
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(mountpoint)
    result = run_cli("mount", "--plain-http", reference, str(mountpoint), cache=cache)
    assert result.returncode == 0, result.stderr
    try:
        assert (mountpoint / "weights.bin").read_bytes() == DATA
    finally:
        run_cli("umount", str(mountpoint), cache=cache)


def test_busy_umount_names_what_holds_it_and_lazy_detaches(
    kit: str, mounts: Mounts, tmp_path: Path
) -> None:
    mountpoint = mounts.mount(kit)
    pid = daemon_pid(mountpoint)
    held = open(mountpoint / "weights.bin", "rb")  # noqa: SIM115 - held across the unmount
    sleeper = subprocess.Popen(["sleep", "60"], cwd=mountpoint)
    try:
        result = run_cli("umount", str(mountpoint), cache=mounts.cache_dir)
        assert_one_line_error(
            result,
            "is busy",
            f"pid {os.getpid()} (",
            f"{mountpoint}/weights.bin (open)",
            f"pid {sleeper.pid} (sleep): {mountpoint} (working directory)",
            f"modelkitfs umount --lazy {mountpoint}",
        )
        assert os.path.ismount(mountpoint)
        result = run_cli("umount", "--lazy", str(mountpoint), cache=mounts.cache_dir)
        assert result.returncode == 0, result.stderr
        assert not os.path.ismount(mountpoint)
        # Files already open still read right until closed; then the daemon stops.
        assert held.read() == DATA
    finally:
        held.close()
        sleeper.kill()
        sleeper.wait()
    wait_for(lambda: not running(pid), "the daemon exits once the last file closed")
