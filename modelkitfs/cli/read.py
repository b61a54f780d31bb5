"""``modelkitfs cat`` and ``cp``: a kit's files read without mounting, through the shared
cache (what they fetch, later mounts and reads find there)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from modelkitfs.cli.parser import Commands, kit_arguments, open_reader
from modelkitfs.errors import ModelKitFSError
from modelkitfs.reader import KitReader

CHUNK = 4 * 1024 * 1024


def add(commands: Commands) -> None:
    cat = commands.add("cat", run_cat)
    cat.add_argument("reference", metavar="REFERENCE")
    cat.add_argument("path", metavar="PATH")
    kit_arguments(cat)

    cp = commands.add("cp", run_cp)
    cp.add_argument("reference", metavar="REFERENCE")
    cp.add_argument("path", metavar="PATH")
    cp.add_argument("dest", metavar="DEST").complete = {  # type: ignore[attr-defined]
        "bash": "_shtab_compgen_files",
        "zsh": "_files",
    }
    cp.add_argument("-r", "--recursive", action="store_true", help="copy a folder")
    kit_arguments(cp)


def run_cat(args: argparse.Namespace) -> None:
    """write a file of a ModelKit to standard output, without mounting

    Write the file PATH of REFERENCE to standard output, read lazily through the shared cache
    (no FUSE needed).

    examples:
      modelkitfs cat {KIT} data/train.csv | head
      modelkitfs cat {KIT} Kitfile
    """
    with open_reader(args) as reader:
        if reader.info(args.path).is_dir:
            raise ModelKitFSError(
                f"{args.path!r} of {reader.reference} is a folder: "
                f"'modelkitfs ls {reader.reference} {args.path}' lists it"
            )
        out = sys.stdout.buffer
        with reader.open(args.path) as source:
            while chunk := source.read(CHUNK):
                out.write(chunk)
        out.flush()


def run_cp(args: argparse.Namespace) -> None:
    """copy files of a ModelKit out, without mounting

    Copy PATH of REFERENCE to DEST (into DEST when it is a folder), read through the shared
    cache (no FUSE needed); -r for a folder and everything under it.

    examples:
      modelkitfs cp {KIT} model.safetensors /models/
      modelkitfs cp -r {KIT} data ./data
    """
    with open_reader(args) as reader:
        info = reader.info(args.path)
        dest = Path(args.dest)
        name = info.path.rpartition("/")[2] or "kit"
        if dest.is_dir():
            dest = dest / name
        if not info.is_dir:
            _copy_file(reader, info.path, dest)
            return
        if not args.recursive:
            raise ModelKitFSError(
                f"{args.path!r} of {reader.reference} is a folder: copy it with 'modelkitfs cp -r'"
            )
        pending = [(info.path, dest)]
        while pending:  # bounded: the kit's tree is finite and has no links
            folder, target = pending.pop()
            target.mkdir(parents=True, exist_ok=True)
            for entry in reader.listdir(folder):
                into = target / entry.path.rpartition("/")[2]
                if entry.is_dir:
                    pending.append((entry.path, into))
                else:
                    _copy_file(reader, entry.path, into)


def _copy_file(reader: KitReader, path: str, dest: Path) -> None:
    """``path`` into ``dest`` whole or not at all (a partial copy is removed)."""
    partial = dest.with_name(f".{dest.name}.modelkitfs-partial")
    try:
        with reader.open(path) as source, open(partial, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)
        os.chmod(partial, reader.info(path).mode)
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
