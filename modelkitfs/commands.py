"""The commands beyond mounting (``prefetch``, ``cache``, ``inspect``, ``ls``, ``mounts``):
running them and printing what they found."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from modelkitfs.blobs import DiskCache
from modelkitfs.blobs.budget import MIN_FREE_FRACTION, parse_size
from modelkitfs.blobs.cache import default_cache_dir
from modelkitfs.blobs.maintenance import cached_blobs, verify_blob
from modelkitfs.errors import ModelKitFSError
from modelkitfs.mount import active_mounts
from modelkitfs.options import MountOptions
from modelkitfs.prefetch import Progress, prefetch
from modelkitfs.reader import KitReader

BAR = 30
SLOW = 1.0  # seconds before a listing shows its progress
T = TypeVar("T")


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class _ProgressBar:
    """One line redrawn in place on a terminal; a line every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 5 and progress.layers_done < progress.layers:
            return
        self.last = now
        share = progress.bytes_done / progress.total_bytes if progress.total_bytes else 1.0
        filled = int(share * BAR)
        rate = progress.downloaded / progress.elapsed if progress.elapsed else 0.0
        line = (
            f"[{'#' * filled}{'-' * (BAR - filled)}] {share:4.0%}  "
            f"{human(progress.bytes_done)}/{human(progress.total_bytes)}  "
            f"layer {min(progress.layers_done + 1, progress.layers)}/{progress.layers}  "
            f"{human(rate)}/s"
        )
        print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=sys.stderr)


def run_prefetch(reference: str, options: MountOptions) -> None:
    options = options.replace(cache_dir=os.path.abspath(options.cache_dir or default_cache_dir()))
    bar = _ProgressBar()
    result = trio.run(prefetch, reference, options, bar)
    if bar.tty:
        print(file=sys.stderr)
    print(
        f"prefetched {result.reference}: {human(result.total_bytes)} in {result.layers} layers "
        f"({human(result.downloaded)} downloaded, the rest already cached), verified, into "
        f"{options.cache_dir}"
    )


def run_cache_command(action: str, cache_dir: str | None, max_size: str | None) -> None:
    root = Path(cache_dir or default_cache_dir())
    if action != "clear" and not root.is_dir():
        raise ModelKitFSError(f"there is no cache at {root} yet: mount or prefetch a kit first")
    cache = DiskCache(root)
    if action in ("prune", "clear") and (fault := cache.probe_write()) is not None:
        raise ModelKitFSError(cache.health.error_message(action, fault))
    try:
        _cache_action(cache, action, max_size)
    except OSError as exc:
        raise ModelKitFSError(cache.health.error_message(action, exc)) from None
    finally:
        cache.process.release()


def _cache_action(cache: DiskCache, action: str, max_size: str | None) -> None:
    root = cache.root
    if action == "info":
        _info(cache)
    elif action == "ls":
        for blob in cached_blobs(cache):
            size = human(blob.size) if blob.size is not None else "?"
            state = blob.state
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(blob.entry.last_used))
            cached = human(blob.entry.bytes)
            print(f"{blob.entry.digest}  {cached:>10} of {size:>10}  {state:8}  {used}")
    elif action == "verify":
        counts: dict[str, int] = {}
        for blob in cached_blobs(cache):
            status = verify_blob(cache, blob)
            counts[status] = counts.get(status, 0) + 1
            print(f"{blob.entry.digest}  {status}")
        print(
            ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "cache is empty"
        )
        if counts.get("corrupt"):
            raise ModelKitFSError(
                f"{counts['corrupt']} cached blob(s) were corrupt and are evicted: the next read "
                "downloads them again; check the disk if this repeats"
            )
    elif action == "prune":
        _, total = cache.free_bytes()
        cap = parse_size(max_size) if max_size else None
        left = cache.prune(cap, int(total * MIN_FREE_FRACTION))
        print(f"cache {root} now holds {human(left)}")
    else:
        cache.clear()
        print(f"cleared {root}")


def _info(cache: DiskCache) -> None:
    blobs = cached_blobs(cache)
    free, total = cache.free_bytes()
    stats = cache.read_stats()
    hits = stats.get("memory_hits", 0) + stats.get("disk_hits", 0)
    reads = hits + stats.get("downloaded_blocks", 0)
    ratio = f"{hits / reads:.1%} of {reads} block reads" if reads else "no finished mounts yet"
    print(f"cache     {cache.root}")
    print(f"size      {human(cache.usage())} ({human(free)} free of {human(total)})")
    states = [blob.state for blob in blobs]
    print(
        f"blobs     {len(blobs)}: {states.count('verified')} verified, "
        f"{states.count('complete')} complete, {states.count('partial')} partial"
    )
    print(f"hit ratio {ratio}")
    if stats.get("corrupt_blobs"):
        print(f"corrupt   {stats['corrupt_blobs']} blob(s) failed verification and were evicted")


def run_inspect(reference: str, options: MountOptions, as_json: bool) -> None:
    """``modelkitfs inspect``: the kit from its manifest and config alone (no layer fetched)."""
    with KitReader(reference, options) as reader:
        kit = reader.describe()
    if as_json:
        print(json.dumps(kit, indent=2))
        return
    print(f"reference {kit['reference']}")
    print(f"manifest  {kit['manifest']}")
    for section in ("package", "model"):
        if kit[section]:
            print(f"{section:9} {_summary(kit[section])}")
    for section in ("datasets", "code", "docs", "prompts"):
        for entry in kit[section]:
            print(f"{section:9} {_summary(entry)}")
    share = kit["cached"] / kit["size"] if kit["size"] else 1.0
    print(f"\nlayers    {len(kit['layers'])}, {human(kit['size'])}, {share:.0%} cached")
    rows = [("TYPE", "PATH", "SIZE", "COMPRESSION", "CACHED", "DIGEST", "MEDIA TYPE")]
    for layer in kit["layers"]:
        cached = layer["cached"] / layer["size"] if layer["size"] else 1.0
        rows.append(
            (
                layer["type"] + ("" if layer["selected"] else " (filtered out)"),
                layer["path"] or ".",
                human(layer["size"]),
                layer["compression"],
                f"{cached:.0%}",
                layer["digest"][:19],
                layer["media_type"],
            )
        )
    _table(rows)


def run_ls(reference: str, path: str, options: MountOptions, long: bool, as_json: bool) -> None:
    """``modelkitfs ls``: a directory of the kit, from its tar indexes (built and cached the
    first time, which reads the layers' headers: progress is shown while that is slow)."""
    with KitReader(reference, options) as reader:
        entries = _with_progress(
            reader,
            lambda: reader.listdir(path) if reader.info(path).is_dir else [reader.info(path)],
        )
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "path": e.path,
                        "type": "directory" if e.is_dir else "file",
                        "size": e.size,
                        "mode": e.mode,
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    for entry in entries:
        name = entry.path.rpartition("/")[2] + ("/" if entry.is_dir else "")
        if long:
            kind = stat.S_IFDIR if entry.is_dir else stat.S_IFREG
            print(f"{stat.filemode(kind | entry.mode)} {entry.size:>14,} {name}")
        else:
            print(name)


def _with_progress(reader: KitReader, work: Callable[[], T]) -> T:
    """``work()``; when it takes long on a terminal, a line saying what is being fetched."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(SLOW)
    tty = sys.stderr.isatty()
    while thread.is_alive():
        if tty:
            print(
                f"\rindexing layers: {human(reader.fetched_bytes)} of headers read",
                end="",
                file=sys.stderr,
            )
        thread.join(0.25)
    if tty and reader.fetched_bytes:
        print(file=sys.stderr)
    if failure:
        raise failure[0]
    return result[0]


def _summary(section: dict[str, Any]) -> str:
    words = [
        str(section[key]) for key in ("name", "path", "version", "framework") if key in section
    ]
    if "authors" in section:
        words.append(f"(by {', '.join(map(str, section['authors']))})")
    if "description" in section:
        words.append(f"- {section['description']}")
    return " ".join(words)


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def run_mounts(as_json: bool) -> None:
    """``modelkitfs mounts``: every active mount and what its daemon reports."""
    mounts = active_mounts()
    if as_json:
        print(json.dumps(mounts, indent=2))
        return
    if not mounts:
        print("no modelkitfs mounts")
        return
    rows = [("MOUNTPOINT", "REFERENCE", "FETCHED", "CACHE HITS", "STATE")]
    for entry in mounts:
        cache = entry.get("cache", {})
        hits = cache.get("memory_hits", 0) + cache.get("disk_hits", 0)
        reads = hits + cache.get("downloaded_blocks", 0)
        rows.append(
            (
                entry["mountpoint"],
                entry["reference"],
                human(entry.get("fetched_bytes", 0)),
                f"{hits / reads:.0%} of {reads} blocks" if reads else "-",
                f"dead: run 'modelkitfs umount {entry['mountpoint']}'"
                if entry["dead"]
                else "serving",
            )
        )
    _table(rows)


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``parser``'s commands and their options (and folders for
    mountpoints)."""
    commands: dict[str, list[str]] = {}
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, subparser in getattr(action, "choices", {}).items():
            commands[name] = sorted(
                option for sub in subparser._actions for option in sub.option_strings
            )
    cases = "\n".join(
        f'        {name}) words="{" ".join(options)}" ;;'
        for name, options in sorted(commands.items())
    )
    return f"""# bash completion for modelkitfs (modelkitfs completion bash)
_modelkitfs() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} command=${{COMP_WORDS[1]}} words
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{" ".join(sorted(commands))} --help --version" -- "$cur"))
        return
    fi
    case "$command" in
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    else
        COMPREPLY=($(compgen -d -- "$cur"))
    fi
}}
complete -F _modelkitfs modelkitfs"""
