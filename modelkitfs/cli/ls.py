"""``modelkitfs ls``: a folder of a kit without mounting, as a mount would show it.

The first listing of a layer reads its tar headers (a line shows while that is slow, on a
terminal); the index is cached for every later listing and mount. ``-l`` adds mode, size and
how much of each file the cache holds; ``-R`` lists the folders under it too.
"""

from __future__ import annotations

import argparse
import stat
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from modelkitfs.cli.output import human, print_json, share
from modelkitfs.cli.parser import Commands, json_argument, kit_arguments, open_reader
from modelkitfs.reader import EntryInfo, KitReader

SLOW = 1.0  # seconds before a listing shows its progress
T = TypeVar("T")


def add(commands: Commands) -> None:
    ls = commands.add("ls", run_ls)
    ls.add_argument("reference", metavar="REFERENCE")
    ls.add_argument("path", metavar="PATH", nargs="?", default="")
    ls.add_argument(
        "-l",
        "--long",
        action="store_true",
        help="mode, size and how much the cache holds (of the file; of its layer, marked "
        "'layer', when the layer is compressed)",
    )
    ls.add_argument("-R", "--recursive", action="store_true", help="the folders under it too")
    json_argument(ls)
    kit_arguments(ls, has_long=True)


def run_ls(args: argparse.Namespace) -> None:
    """list a folder of a ModelKit without mounting

    List PATH (default: the kit's root) of REFERENCE, as a mount would show it. The first
    listing of a layer reads its tar headers (a progress line shows while that is slow); the
    index is cached for every later listing and mount.

    examples:
      modelkitfs ls {KIT}
      modelkitfs ls -l {KIT} data/
      modelkitfs ls -R {KIT}
      modelkitfs ls --json {KIT} model
    """
    with open_reader(args) as reader:
        folders = with_progress(reader, lambda: _walk(reader, args.path, args.recursive))
        files = [e.path for _, entries in folders for e in entries if not e.is_dir]
        cached = {path: reader.cached(path) for path in files} if args.long or args.json else {}
    if args.json:
        print_json([_document(e, cached.get(e.path)) for _, entries in folders for e in entries])
        return
    for position, (folder, entries) in enumerate(folders):
        if args.recursive:
            print(f"{'' if position == 0 else chr(10)}{folder or '.'}:")
        for entry in entries:
            name = entry.path.rpartition("/")[2] + ("/" if entry.is_dir else "")
            if args.long:
                kind = stat.S_IFDIR if entry.is_dir else stat.S_IFREG
                held = _held(cached.get(entry.path))
                print(f"{stat.filemode(kind | entry.mode)} {entry.size:>14,} {held:>10} {name}")
            else:
                print(name)


def _walk(reader: KitReader, path: str, recursive: bool) -> list[tuple[str, list[EntryInfo]]]:
    """(folder, its entries) for ``path`` and, when ``recursive``, every folder under it."""
    info = reader.info(path)
    if not info.is_dir:
        return [(path.rpartition("/")[0], [info])]
    found = []
    pending = [info.path]
    while pending:
        folder = pending.pop(0)
        entries = reader.listdir(folder)
        found.append((folder, entries))
        if recursive:
            pending[:0] = [e.path for e in entries if e.is_dir]
    return found


def _held(cached: Any) -> str:
    if cached is None:
        return "-"
    if cached.file_bytes is not None:
        return human(cached.file_bytes)
    return f"layer {share(cached.layer_bytes, cached.layer_size)}"


def _document(entry: EntryInfo, cached: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "path": entry.path,
        "type": "directory" if entry.is_dir else "file",
        "size": entry.size,
        "mode": entry.mode,
    }
    if cached is not None:
        document.update(
            cached=cached.file_bytes,
            layer=cached.layer,
            layer_cached=cached.layer_bytes,
            layer_size=cached.layer_size,
        )
    return document


def with_progress(reader: KitReader, work: Callable[[], T]) -> T:
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
