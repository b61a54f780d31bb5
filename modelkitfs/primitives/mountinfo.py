"""What is mounted where: /proc/self/mountinfo read once, in one place, and what keeps a mount
busy (as ``fuser -m`` finds it). Both ``umount`` (is this ours? who holds it?) and the FUSE
session (which device is my mount?) read it."""

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


def mount_table() -> list[MountEntry]:
    """The mounts this process sees, in mount order."""
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields, _, tail = line.partition(" - ")
            fstype, source = ([*tail.split(), "", ""])[:2]
            parts = fields.split()
            found.append(MountEntry(_unescape(parts[4]), fstype, _unescape(source), parts[2]))
    return found


def mount_entry(path: str) -> MountEntry | None:
    """What is mounted at ``path`` (the topmost mount), or None; the path as given or with
    its links resolved (a dead mount cannot be resolved through, so both are tried)."""
    names = {os.path.abspath(path), os.path.realpath(path)}
    matching = [entry for entry in mount_table() if entry.mountpoint in names]
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
