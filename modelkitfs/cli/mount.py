"""``modelkitfs mount``, ``umount`` and ``mounts``: the commands about mounts themselves."""

from __future__ import annotations

import argparse
from typing import Any

from modelkitfs.cli.output import human, patience, print_json, table
from modelkitfs.cli.parser import Commands, kit_arguments, mount_only_arguments, options_from
from modelkitfs.daemon.answers import active_mounts
from modelkitfs.mount import mount, mount_foreground, unmount


def add(commands: Commands) -> None:
    m = commands.add("mount", run_mount)
    m.add_argument("reference", metavar="REFERENCE")
    m.add_argument("mountpoint", metavar="MOUNTPOINT").complete = {  # type: ignore[attr-defined]
        "bash": "_shtab_compgen_dirs",
        "zsh": "_files -/",
    }
    kit_arguments(m)
    mount_only_arguments(m)

    u = commands.add("umount", run_umount, aliases=["unmount"])
    u.add_argument("mountpoint", metavar="MOUNTPOINT").complete = {  # type: ignore[attr-defined]
        "bash": "_modelkitfs_mountpoints",
        "zsh": "_modelkitfs_mountpoints",
    }
    u.add_argument(
        "--lazy",
        "-z",
        action="store_true",
        help="detach now even if busy; clean up when the last user leaves",
    )

    mounts = commands.add("mounts", run_mounts)
    mounts.add_argument("--json", action="store_true", help="machine-readable output")


def run_mount(args: argparse.Namespace) -> None:
    """mount a ModelKit

    Mount REFERENCE (registry/repository[:tag][@sha256:digest]) at MOUNTPOINT. Returns once the
    folder is mounted; the daemon keeps running in the background and logs to
    CACHE_DIR/logs/modelkitfs.log (by default ~/.cache/modelkitfs/logs/modelkitfs.log;
    'modelkitfs mounts' shows each daemon's).

    examples:
      modelkitfs mount {KIT} /mnt/llm
      modelkitfs mount --plain-http 127.0.0.1:5000/demo/kit:latest /mnt/kit --foreground
      modelkitfs mount -f model -f datasets:validation {KIT} /mnt/llm
      modelkitfs mount --label quantization=q4_0 registry.example:5000/team/llm:all /mnt/llm
      modelkitfs mount --prefetch model --timeout 120 {KIT} /mnt/llm
    """
    options = options_from(args)
    if args.foreground:
        mount_foreground(args.reference, args.mountpoint, options)
    else:
        with patience(args.reference, options.timeout):
            mount(args.reference, args.mountpoint, options)


def run_umount(args: argparse.Namespace) -> None:
    """unmount a mounted ModelKit

    Unmount MOUNTPOINT, also when its daemon has died. Only modelkitfs mounts: any other file
    system is refused (use umount(8)).

    examples:
      modelkitfs umount /mnt/llm
      modelkitfs umount --lazy /mnt/llm     # busy: detach now, stop once the last file closes
    """
    unmount(args.mountpoint, lazy=args.lazy)


def run_mounts(args: argparse.Namespace) -> None:
    """list the ModelKits mounted on this machine

    List active modelkitfs mounts: mountpoint, reference, bytes fetched, cache hits, and each
    daemon's pid, log and cache folder. Every daemon is asked at once; one that does not answer
    within 5 s (stopped, or wedged) is listed as not answering, with its pid when known and
    what to do, and costs the others nothing.

    examples:
      modelkitfs mounts
      modelkitfs mounts --json
    """
    mounts = active_mounts()
    if args.json:
        print_json(mounts)
        return
    if not mounts:
        print("no modelkitfs mounts")
        return
    rows = [("MOUNTPOINT", "REFERENCE", "FETCHED", "CACHE HITS", "PID", "STATE", "LOG", "CACHE")]
    for entry in mounts:
        cache = entry.get("cache", {})
        hits = cache.get("memory_hits", 0) + cache.get("disk_hits", 0)
        reads = hits + cache.get("downloaded_blocks", 0)
        rows.append(
            (
                entry["mountpoint"],
                f"every kit ({entry['kit_count']} loaded)"
                if "kit_count" in entry
                else entry["reference"],
                human(entry.get("fetched_bytes", 0)),
                f"{hits / reads:.0%} of {reads} blocks" if reads else "-",
                str(entry.get("pid", "-")),
                _state(entry),
                str(entry.get("log") or "-"),
                str(entry.get("cache_dir") or "-"),
            )
        )
    table(rows)


def _state(entry: dict[str, Any]) -> str:
    if entry["dead"]:
        return f"dead: run 'modelkitfs umount {entry['mountpoint']}'"
    if not entry["answering"]:
        return f"not answering: {entry['problem']}"
    return "serving"
