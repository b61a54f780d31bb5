"""Starting daemons: where they log, and who may read it; a mountpoint that does not answer."""

from __future__ import annotations

import importlib
import stat
import threading
from pathlib import Path

import pytest

from modelkitfs.errors import MountError
from modelkitfs.mount import daemon_log
from modelkitfs.primitives.mountinfo import MountEntry

mounting = importlib.import_module("modelkitfs.mount")  # the package's name is the function


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_daemons_log_and_its_folders_are_the_caches_owners_alone(tmp_path: Path) -> None:
    cache = tmp_path / "new" / "cache"
    path, fault = daemon_log(str(cache))
    assert fault is None and path.is_file()
    assert [mode(p) for p in (path, path.parent, cache, cache.parent)] == [0o600] + [0o700] * 3


def test_a_mountpoint_check_that_hangs_below_no_fuse_mount_names_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mountpoint reached through a link into a stopped mount: the table's mount above the
    unresolved path is another (here the root), which must not be named, nor unmounted."""
    released = threading.Event()
    monkeypatch.setattr(mounting, "_check_folder", lambda path: released.wait(60))
    monkeypatch.setattr(
        mounting, "mount_above", lambda path: MountEntry("/", "ext4", "/dev/vda1", "254:1", None)
    )
    try:
        with pytest.raises(MountError) as refused:
            mounting.check_mountpoint("/home/someone/link/kit")
    finally:
        released.set()
    assert str(refused.value) == (
        "cannot use mountpoint /home/someone/link/kit: a file system on the way to it does not "
        "answer (see 'modelkitfs mounts')"
    )
