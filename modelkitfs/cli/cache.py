"""``modelkitfs cache info|ls|verify|prune|clear``: the shared cache as a whole, between
mounts. Safe while mounts run: what they lose is downloaded again; ``clear`` names the mounts
still using the cache and asks first (or takes ``--yes``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from modelkitfs.blobs.maintenance import CachedBlob, cached_blobs, verify_blob
from modelkitfs.cache import (
    DEFAULT_MAX_FRACTION,
    MIN_FREE_FRACTION,
    DiskCache,
    default_cache_dir,
    parse_size,
)
from modelkitfs.cli.output import human, print_json, share, table
from modelkitfs.cli.parser import (
    Commands,
    cache_dir_argument,
    check_cache_folder,
    json_argument,
    refuse,
)
from modelkitfs.daemon.answers import active_mounts
from modelkitfs.errors import ModelKitFSError
from modelkitfs.session.catalog import owners, recorded_kits

MAX_NAMED = 5


def add(commands: Commands) -> None:
    c = commands.add("cache", run_cache)
    actions = c.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help, description=help)
        cache_dir_argument(parser)
        return parser

    only_prune = "only 'modelkitfs cache prune' takes it"
    refuse(
        action("info", "size, blobs (verified / complete / partial), hit ratio"),
        "--max-size",
        only_prune,
    )
    listing = action("ls", "each blob: cached bytes, state, last use, kit and path")
    json_argument(listing)
    refuse(listing, "--max-size", only_prune)
    refuse(
        action("verify", "hash every complete blob again; evict those that fail"),
        "--max-size",
        only_prune,
    )
    prune = action(
        "prune",
        "evict least recently used blocks down to a size (default: the cache's cap)",
    )
    prune.add_argument(
        "--max-size",
        metavar="SIZE",
        help="evict down to this size (e.g. 20G; default the cap recorded for the cache, "
        "else half its file system)",
    )
    clear = action("clear", "remove everything cached")
    refuse(clear, "--max-size", only_prune)
    clear.add_argument(
        "--yes", "-y", action="store_true", help="also when mounts use the cache: do not ask"
    )


def run_cache(args: argparse.Namespace) -> None:
    """inspect and manage the shared cache

    Safe while mounts run: what they lose is downloaded again.

    examples:
      modelkitfs cache info
      modelkitfs cache ls
      modelkitfs cache verify
      modelkitfs cache prune --max-size 20G
      modelkitfs cache clear --yes
    """
    root = Path(args.cache_dir or default_cache_dir())
    check_cache_folder(root)
    if args.action != "clear" and not root.is_dir():
        raise ModelKitFSError(f"there is no cache at {root} yet: mount or prefetch a kit first")
    if args.action == "clear" and not _may_clear(root, args.yes):
        return
    cache = DiskCache(root)
    if args.action in ("prune", "clear") and (fault := cache.probe_write()) is not None:
        raise ModelKitFSError(cache.health.error_message(args.action, fault))
    try:
        _run(cache, args)
    except OSError as exc:
        raise ModelKitFSError(cache.health.error_message(args.action, exc)) from None
    finally:
        cache.process.release()


def _run(cache: DiskCache, args: argparse.Namespace) -> None:
    if args.action == "info":
        _info(cache)
    elif args.action == "ls":
        _ls(cache, args.json)
    elif args.action == "verify":
        _verify(cache)
    elif args.action == "prune":
        _prune(cache, args.max_size)
    else:
        cache.clear()
        print(f"cleared {cache.root}")


def _may_clear(root: Path, yes: bool) -> bool:
    """Whether to go on: yes when no mount uses the cache, when told ``--yes``, or when the
    user says so at a terminal; refused otherwise. A mount whose daemon lives but does not
    answer may use it (a dead one uses nothing)."""
    using = [
        m["mountpoint"] + (" (not answering)" if _silent(m) else "")
        for m in active_mounts()
        if _same(m.get("cache_dir"), root) or _silent(m)
    ]
    if not using or yes:
        return True
    named = ", ".join(using[:MAX_NAMED]) + (" and more" if len(using) > MAX_NAMED else "")
    what = f"cache {root} is used by {len(using)} mount(s): {named}"
    if sys.stdin.isatty():
        answer = input(f"{what}; their next reads download again. Clear it? [y/N] ")
        if answer.strip().lower() in ("y", "yes"):
            return True
        print("not cleared")
        return False
    raise ModelKitFSError(
        f"{what}; their next reads would download again: add --yes to clear it anyway"
    )


def _silent(mount: dict[str, Any]) -> bool:
    return not mount.get("answering", True) and not mount.get("dead")


def _same(path: Any, root: Path) -> bool:
    return bool(path) and os.path.realpath(str(path)) == os.path.realpath(root)


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
    print(f"kits      {len(recorded_kits(cache.root))} ('modelkitfs list' lists them)")
    print(f"hit ratio {ratio}")
    if stats.get("corrupt_blobs"):
        print(f"corrupt   {stats['corrupt_blobs']} blob(s) failed verification and were evicted")


def _ls(cache: DiskCache, as_json: bool) -> None:
    belongs = owners(recorded_kits(cache.root))
    blobs = cached_blobs(cache)
    documents = [_blob_document(blob, belongs.get(blob.entry.digest, [])) for blob in blobs]
    if as_json:
        print_json(documents)
        return
    rows = [("DIGEST", "CACHED", "OF", "STATE", "LAST USED", "KIT", "PATH")]
    for document in documents:
        size = document["size"]
        rows.append(
            (
                document["digest"],
                f"{human(document['cached'])} "
                f"({share(document['cached'], size) if size is not None else '?'})",
                human(size) if size is not None else "?",
                document["state"],
                time.strftime("%Y-%m-%d %H:%M", time.localtime(document["last_used"])),
                document["kits"][0]["reference"] if document["kits"] else "-",
                (document["kits"][0]["path"] or ".") if document["kits"] else "-",
            )
        )
    table(rows)


def _blob_document(blob: CachedBlob, kits: list[Any]) -> dict[str, Any]:
    return {
        "digest": blob.entry.digest,
        "cached": min(blob.entry.bytes, blob.size) if blob.size is not None else blob.entry.bytes,
        "size": blob.size,
        "state": blob.state,
        "last_used": blob.entry.last_used,
        "kits": [
            {
                "reference": record.references[0],
                "manifest": record.manifest,
                "type": layer.kind,
                "path": layer.path,
            }
            for record, layer in kits
        ],
    }


def _verify(cache: DiskCache) -> None:
    counts: dict[str, int] = {}
    for blob in cached_blobs(cache):
        status = verify_blob(cache, blob)
        counts[status] = counts.get(status, 0) + 1
        print(f"{blob.entry.digest}  {status}")
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "cache is empty")
    if counts.get("corrupt"):
        raise ModelKitFSError(
            f"{counts['corrupt']} cached blob(s) were corrupt and are evicted: the next read "
            "downloads them again; check the disk if this repeats"
        )


def _prune(cache: DiskCache, max_size: str | None) -> None:
    _, total = cache.free_bytes()
    if max_size:
        cap, why = parse_size(max_size), f"--max-size {max_size}"
    elif (recorded := cache.read_config().get("max_size")) is not None:
        cap, why = recorded, "the size cap recorded for this cache"
    else:
        cap, why = int(total * DEFAULT_MAX_FRACTION), "the default cap, half its file system"
    left = cache.prune(cap, int(total * MIN_FREE_FRACTION))
    print(f"cache {cache.root} now holds {human(left)} (pruned to {human(cap)}: {why})")
