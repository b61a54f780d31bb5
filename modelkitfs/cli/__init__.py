"""The ``modelkitfs`` command: one module per command (or small group of them), the grammar
they share in :mod:`~modelkitfs.cli.parser`, and how they write in :mod:`~modelkitfs.cli.output`.

Whatever goes wrong reaches the user as one line, ``modelkitfs: error: ...``, and exit code 1:
usage errors, errors they can act on, and (with a request to report it) anything else; set
``MODELKITFS_DEBUG=1`` for the traceback of the last.
"""

from __future__ import annotations

import os
import sys

from modelkitfs import __version__
from modelkitfs.cli import (
    cache,
    completion,
    inspect,
    kits,
    ls,
    mount,
    prefetch,
    read,
    serve,
    verify,
)
from modelkitfs.cli.network import blame_the_proxy
from modelkitfs.cli.output import (
    expected_failure,
    fail,
    quiet_exit_on_closed_pipe,
    show_warnings,
    stdout_closed,
)
from modelkitfs.cli.parser import Commands, Parser, join_dashed_values
from modelkitfs.registry.credentials import pair_registry

MODULES = (mount, serve, prefetch, inspect, ls, read, verify, kits, cache, completion)
OVERVIEW = ("mount", "inspect", "ls", "cat", "umount", "prefetch", "cache")


def build_parser() -> Parser:
    import argparse

    parser = Parser(
        prog="modelkitfs",
        description="Mount a KitOps ModelKit as a lazy, read-only folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"modelkitfs {__version__}")
    commands = Commands(parser)
    for module in MODULES:
        module.add(commands)
    parser.epilog = "examples:" + "".join(commands.examples[c] for c in OVERVIEW) + "\n"
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_dashed_values(parser, sys.argv[1:] if argv is None else argv))
    if "reference" in args:  # $MODELKITFS_USERNAME/PASSWORD are for this kit's registry alone
        os.environ.update(pair_registry(args.reference))
    if not getattr(args, "foreground", False):  # a daemon in the foreground (csi) logs itself
        show_warnings()
    try:
        args.run(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if stdout_closed():  # 'modelkitfs ... | head': the reader has all it wanted
            return quiet_exit_on_closed_pipe()
        shown = expected_failure(exc)
        if shown is not None:
            return fail(blame_the_proxy(shown, getattr(args, "proxy", None)))
        if isinstance(exc, SystemExit) or os.environ.get("MODELKITFS_DEBUG"):
            raise
        return fail(
            RuntimeError(
                f"unexpected failure: {exc!r}; this is a bug, please report it (set "
                "MODELKITFS_DEBUG=1 to see where it happened)"
            )
        )
    return 0
