"""``modelkitfs list``: the kits the cache holds, by reference and digest, as ``kit list``
lists local storage, with how much of each is cached."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from modelkitfs.blobs.maintenance import cached_blobs
from modelkitfs.cache import DiskCache, default_cache_dir
from modelkitfs.cli.output import human, print_json, share, table
from modelkitfs.cli.parser import Commands, cache_dir_argument, check_cache_folder, json_argument
from modelkitfs.session.catalog import recorded_kits


def add(commands: Commands) -> None:
    k = commands.add("list", run_list)
    cache_dir_argument(k)
    json_argument(k)


def run_list(args: argparse.Namespace) -> None:
    """list the ModelKits the cache holds

    List the kits this cache has held (mounted, prefetched or read): reference, manifest
    digest, size and how much of it is cached now.

    examples:
      modelkitfs list
      modelkitfs list --json
    """
    root = Path(args.cache_dir or default_cache_dir())
    check_cache_folder(root)
    records = recorded_kits(root) if root.is_dir() else []
    held: dict[str, int] = {}
    if records:
        cache = DiskCache(root)
        try:
            held = {blob.entry.digest: blob.entry.bytes for blob in cached_blobs(cache)}
        finally:
            cache.process.release()
    documents: list[dict[str, Any]] = []
    for record in records:
        size = sum(layer.size for layer in record.layers)
        cached = sum(min(held.get(layer.digest, 0), layer.size) for layer in record.layers)
        documents.append(
            {
                "reference": record.references[0],
                "references": list(record.references),
                "manifest": record.manifest,
                "size": size,
                "cached": cached,
                "last_used": record.last_used,
            }
        )
    if args.json:
        print_json(documents)
        return
    if not documents:
        print(f"no kits in the cache {root}")
        return
    rows = [("REFERENCE", "DIGEST", "SIZE", "CACHED", "LAST USED")]
    for document in documents:
        rows.append(
            (
                document["reference"],
                document["manifest"][:19],
                human(document["size"]),
                share(document["cached"], document["size"]),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(document["last_used"])),
            )
        )
    table(rows)
