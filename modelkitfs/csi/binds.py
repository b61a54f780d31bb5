"""Read-only bind mounts and what a target path is now, straight through mount(2).

A volume that shares the node service is its kit folder ``ROOT/registry/repo@sha256:...``
bound at the pod's target path: read-only, no devices, no set-uid. Calling the kernel rather
than ``mount --bind`` keeps paths out of any command line and needs no util-linux.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MNT_DETACH = 2
DEAD = (errno.ENOTCONN, errno.ECONNABORTED)  # a FUSE mount whose daemon is gone

_libc = ctypes.CDLL(None, use_errno=True)


class Target(enum.Enum):
    ABSENT = "absent"
    EMPTY = "empty"  # a folder, nothing mounted on it
    MOUNTED = "mounted"  # something serves it
    DEAD = "dead"  # a mount whose daemon has stopped


def state(path: str) -> Target:
    try:
        os.stat(path)
    except FileNotFoundError:
        return Target.ABSENT
    except OSError as exc:
        if exc.errno in DEAD:
            return Target.DEAD
        raise
    return Target.MOUNTED if os.path.ismount(path) else Target.EMPTY


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def bind_read_only(source: str, target: str) -> None:
    """Show the folder ``source`` at ``target``, read-only."""
    _check(
        _libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None),
        f"binding {source} at {target}",
    )
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    try:
        _check(
            _libc.mount(b"none", os.fsencode(target), None, flags, None),
            f"making {target} read-only",
        )
    except OSError:
        unmount(target)
        raise


def unmount(target: str) -> None:
    """Take whatever is mounted at ``target`` off it; if it is busy, detach it now (what holds
    it keeps it until let go). Nothing mounted there, or no ``target``, is no error. Nothing
    mounted is asked anything (a FUSE daemon that is stopped does not hold this up)."""
    path = os.fsencode(target)
    if _libc.umount2(path, 0) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):  # not a mount point, or nothing there at all
        return
    if code == errno.EBUSY or code in DEAD:
        _check(_libc.umount2(path, MNT_DETACH), f"detaching {target}")
        return
    raise OSError(code, f"unmounting {target}: {os.strerror(code)}")
