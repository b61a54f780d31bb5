"""What is mounted where: /proc/self/mountinfo read once, in one place, and what keeps a mount
busy (as ``fuser -m`` finds it). Both ``umount`` (is this ours? who holds it?) and the FUSE
session (which device is my mount?) read it, and a command names the mount a path is in when
that mount's daemon does not answer. Only resolving a path's links asks the file systems on
its way."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mountpoint: str
    fstype: str
    source: str
    device: str  # major:minor
    owner: int | None = None  # who mounted it, for a FUSE mount (its user_id)


def mount_table(table: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """The mounts this process sees, in mount order."""
    found = []
    with open(table) as mountinfo:
        for line in mountinfo:
            fields, _, tail = line.partition(" - ")
            fstype, source, options = ([*tail.split(), "", "", ""])[:3]
            parts = fields.split()
            owner = re.search(r"(?:^|,)user_id=(\d+)(?:,|$)", options)
            found.append(
                MountEntry(
                    _unescape(parts[4]),
                    fstype,
                    _unescape(source),
                    parts[2],
                    int(owner.group(1)) if owner else None,
                )
            )
    return found


def mount_entry(path: str) -> MountEntry | None:
    """What is mounted at ``path`` (the topmost mount), or None: the path as given, without
    asking any file system; else with its links resolved, which asks every file system on
    its way (a FUSE daemon that is stopped answers never: ask this with a deadline)."""
    table = mount_table()
    for resolve in (False, True):
        name = os.path.realpath(path) if resolve else os.path.abspath(path)
        if (entry := _topmost(table, name)) is not None:
            return entry
    return None


def mount_above(path: str) -> MountEntry | None:
    """The mount ``path`` (absolute, without links) is in: the topmost one at it or at the
    nearest folder above it; found in the table alone."""
    table = mount_table()
    for folder in (path, *(str(parent) for parent in Path(path).parents)):
        if (entry := _topmost(table, folder)) is not None:
            return entry
    return None


def _topmost(table: list[MountEntry], mountpoint: str) -> MountEntry | None:
    """The last mount at ``mountpoint`` in ``table`` (mount order): the one a path there sees."""
    matching = [entry for entry in table if entry.mountpoint == mountpoint]
    return matching[-1] if matching else None


def busy_holders(mountpoint: str) -> list[str]:
    """What keeps ``mountpoint`` busy, one ``pid N (command): PATH (how)`` per process: files
    open or memory-mapped and working directories under it, as ``fuser -m`` finds them (of
    the processes this user may look at)."""
    inside = mountpoint.rstrip("/") + "/"
    found: list[str] = []
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        uses: dict[str, str] = {}
        with contextlib.suppress(OSError):
            for name in ("cwd", "root"):
                with contextlib.suppress(OSError):
                    uses.setdefault(os.readlink(process / name), "working directory")
            for link in (process / "fd").iterdir():
                with contextlib.suppress(OSError):
                    uses.setdefault(os.readlink(link), "open")
            for line in (process / "maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                if len(fields) == 6:
                    uses.setdefault(fields[5], "mapped")
        held = sorted(path for path in uses if path == mountpoint or path.startswith(inside))
        if held:
            with contextlib.suppress(OSError):
                command = (process / "comm").read_text().strip()
                paths = ", ".join(f"{path} ({uses[path]})" for path in held)
                found.append(f"pid {process.name} ({command}): {paths}")
    return found


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
