"""The command line's grammar: a parser whose usage errors are one line and exit 1, commands
whose help is the docstring of the function that runs them (written once, where the command is,
in the form ``--help`` shows it), and the arguments several commands share (what selects a kit,
how to reach it, the cache).

Every option of :class:`~modelkitfs.session.options.MountOptions` is a flag named after its
field; its choices come from the tuples in :mod:`modelkitfs.session.options`, and its value is
parsed there, once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from inspect import getdoc
from pathlib import Path
from typing import Any, NoReturn

from modelkitfs.cache import default_cache_dir
from modelkitfs.cli.network import check_proxy
from modelkitfs.cli.output import patience
from modelkitfs.errors import ModelKitFSError
from modelkitfs.kit.filters import FILTER_TYPES
from modelkitfs.reader import KitReader
from modelkitfs.registry.network import DEFAULT_TIMEOUT
from modelkitfs.session.options import (
    LOG_LEVELS,
    OPTION_NAMES,
    PREFETCH_MODES,
    VERIFY_MODES,
    MountOptions,
    signing_arguments,
    signing_environment,
)

KIT = "registry.example:5000/team/llm:v1"  # in examples
Run = Callable[[argparse.Namespace], None]  # what runs a command


class Parser(argparse.ArgumentParser):
    """Usage errors as every other error: ``modelkitfs: error: ...`` on one line, exit 1."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("modelkitfs").strip()
        hint = f"modelkitfs {command} --help" if command else "modelkitfs --help"
        print(f"modelkitfs: error: {message}; see '{hint}'", file=sys.stderr)
        sys.exit(1)


class Commands:
    """Adds each command's parser, its texts read from the docstring of the function that runs
    it, as ``--help`` shows them (see :func:`help_texts`), and keeps its examples for the
    overview of ``modelkitfs --help``."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.actions = parser.add_subparsers(
            dest="command", required=True, metavar="COMMAND", parser_class=Parser
        )
        self.examples: dict[str, str] = {}

    def add(self, name: str, run: Run, **kwargs: Any) -> argparse.ArgumentParser:
        help, description, examples = help_texts(run)
        self.examples[name] = examples
        parser: argparse.ArgumentParser = self.actions.add_parser(
            name,
            help=help,
            description=description,
            epilog=f"examples:{examples}\n" if examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )
        parser.set_defaults(run=run)
        return parser


def help_texts(run: Run) -> tuple[str, str, str]:
    """The one-line help, the description and the examples of the command ``run`` runs, from
    its docstring: the first line; the paragraphs up to ``examples:``, each joined into one
    line; the lines under ``examples:`` as they stand (each after a newline). ``{KIT}`` stands
    for :data:`KIT`, the example reference. Under ``python -OO`` (no docstrings) all are empty."""
    text = (getdoc(run) or "").replace("{KIT}", KIT)
    text, _, examples = text.partition("\n\nexamples:\n")
    help, _, description = text.partition("\n\n")
    paragraphs = [" ".join(paragraph.splitlines()) for paragraph in description.split("\n\n")]
    return help, "\n\n".join(paragraphs), "".join(f"\n{line}" for line in examples.splitlines())


class _Refused(argparse.Action):
    """An option that means nothing to this command: said so, rather than ignored."""

    def __init__(self, *args: Any, why: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.why = why

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        command = parser.prog.removeprefix("modelkitfs ")
        parser.error(f"{'/'.join(self.option_strings)} does nothing for {command}: {self.why}")


def refuse(parser: argparse.ArgumentParser, flag: str, why: str) -> None:
    """Refuse ``flag`` (and a value after it) with the reason ``why``."""
    parser.add_argument(
        flag, nargs="?", action=_Refused, why=why, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def cache_dir_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the shared cache (default $MODELKITFS_CACHE_DIR, else "
        "$XDG_CACHE_HOME/modelkitfs, else ~/.cache/modelkitfs)",
    ).complete = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}  # type: ignore[attr-defined]


def kit_arguments(
    parser: argparse.ArgumentParser, *, fetches: bool = True, has_long: bool = False
) -> None:
    """What selects a kit and how to reach it (mount, prefetch, inspect, ls, cat, cp).
    ``fetches``: the command reads layers, so --verify means something to it; ``has_long``:
    its ``-l`` is ``--long`` (ls). ``-l`` has that one meaning: elsewhere it is refused."""
    if not has_long:
        refuse(parser, "-l", "-l is ls's --long; a ModelKit index entry is picked with --label")
    parser.add_argument(
        "--filter",
        "-f",
        dest="filters",
        action="append",
        default=[],
        metavar="FILTER",
        help="only part of the kit, as 'kit unpack --filter' unpacks it: TYPES[:IDS] with "
        f"types {', '.join(FILTER_TYPES)} and ids matching an entry's name or path as "
        "written in the Kitfile (e.g. -f model,datasets, -f datasets:validation, "
        "-f docs:./README.md); repeatable, an entry is in when any filter matches; "
        "filtered-out layers are never fetched",
    ).complete = {"bash": "_modelkitfs_filters", "zsh": f"({' '.join(FILTER_TYPES)})"}  # type: ignore[attr-defined]
    parser.add_argument(
        "--label",
        dest="labels",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pick the ModelKit of a ModelKit index whose labels match (repeatable)",
    )
    access_arguments(parser, fetches=fetches)


def access_arguments(
    parser: argparse.ArgumentParser, *, fetches: bool = True, policy: bool = False
) -> None:
    """How to reach registries, where to cache and whose signatures to require (every command
    that reads kits); ``policy``: a policy file too (serve)."""
    signing_arguments(parser, policy=policy)  # as the CSI plugin's
    net = parser.add_argument_group("network (as kit's flags)")
    net.add_argument("--plain-http", action="store_true", help="talk plain HTTP to the registry")
    net.add_argument(
        "--tls-verify",
        type=_boolean,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="verify the registry's TLS certificate (default true; --tls-verify=false to skip)",
    )
    net.add_argument("--tls-cert", metavar="CA.pem", help="also trust the CA(s) in this file")
    net.add_argument(
        "--cert", metavar="CERT.pem", help="client certificate (default $KITOPS_CLIENT_CERT)"
    )
    net.add_argument("--key", metavar="KEY.pem", help="its key (default $KITOPS_CLIENT_KEY)")
    net.add_argument(
        "--proxy",
        metavar="URL",
        help="HTTP(S) or SOCKS5 proxy, http://[USER:PASSWORD@]HOST:PORT (default $HTTPS_PROXY, "
        "honouring $NO_PROXY)",
    )
    net.add_argument(
        "--mirror",
        dest="mirrors",
        action="append",
        default=[],
        metavar="HOST",
        help="try this registry mirror or pull-through cache first (repeatable; also "
        "'mirrors' in the configuration file); falls back to the registry",
    )
    net.add_argument(
        "--timeout",
        default=str(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help="a request or read that cannot be served within this fails rather than hang; "
        f"failed requests are retried within it (default {DEFAULT_TIMEOUT:g})",
    )
    cache = parser.add_argument_group("cache")
    cache_dir_argument(cache)
    cache.add_argument(
        "--cache-max-size",
        metavar="SIZE",
        help="evict least recently used blocks beyond this (e.g. 50G; default half the "
        "cache's file system); 5%% of the disk is always kept free",
    )
    if not fetches:
        refuse(parser, "--verify", "it fetches no layer, so there is nothing to verify")
    else:
        cache.add_argument(
            "--verify",
            choices=VERIFY_MODES,
            default=VERIFY_MODES[0],
            help="complete (default): verify each blob once all of it is cached, evicting it on "
            "a mismatch; full: download and verify each layer whole before serving any of it",
        )


def daemon_arguments(parser: argparse.ArgumentParser) -> None:
    """What a daemon (mount, serve) is told beyond the kit."""
    parser.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached, log to stderr, unmount on Ctrl-C or SIGTERM",
    )
    parser.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users read the mount (needs user_allow_other in /etc/fuse.conf "
        "unless root)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=LOG_LEVELS,
        help="default: info",
    )


def mount_only_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefetch",
        choices=PREFETCH_MODES,
        default=PREFETCH_MODES[0],
        help="after mounting, fill the cache in the background with the model (and its parts) "
        "or the whole kit; reads meanwhile share its downloads (default none: lazy only)",
    )
    daemon_arguments(parser)


def options_from(args: argparse.Namespace) -> MountOptions:
    """The command's options, parsed (every such flag is named after its field), with a cache
    folder that is not a file."""
    given = {name: getattr(args, name) for name in OPTION_NAMES if name in args}
    options = MountOptions(**{**given, **signing_environment(given)})
    check_cache_folder(options.cache_dir or default_cache_dir())
    if "reference" in args:
        check_proxy(options.proxy, args.reference)
    return options


def open_reader(args: argparse.Namespace) -> KitReader:
    """The kit the command names, opened with its options (saying so on a terminal when the
    registry is slow to answer)."""
    options = options_from(args)
    with patience(args.reference, options.timeout):
        return KitReader(args.reference, options)


def check_cache_folder(path: str | os.PathLike[str]) -> None:
    """A cache that cannot be written is used uncached, with a warning; one that is a file (or
    under one) is a mistake in the command line."""
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            if not folder.is_dir():
                raise ModelKitFSError(
                    f"cache {path} cannot be a folder: {folder} is a file; give --cache-dir "
                    "a folder (or set $MODELKITFS_CACHE_DIR)"
                )
            return


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def join_dashed_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``--cache-max-size -5G`` as ``--cache-max-size=-5G``: argparse takes a value that starts
    with ``-`` for an option and says "expected one argument"; joined, the value reaches its
    parser, which says what is wrong with it."""
    valued: set[str] = set()
    known: set[str] = set()
    for action in _all_actions(parser):
        known.update(action.option_strings)
        if action.option_strings and action.nargs is None:
            valued.update(o for o in action.option_strings if o.startswith("--"))
    joined: list[str] = []
    words = list(argv)
    position = 0
    while position < len(words):
        word = words[position]
        following = words[position + 1] if position + 1 < len(words) else None
        if (
            word in valued
            and following is not None
            and following.startswith("-")
            and following.partition("=")[0] not in known
            and following != "--"
        ):
            joined.append(f"{word}={following}")
            position += 2
        else:
            joined.append(word)
            position += 1
    return joined


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    found = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _all_actions(sub)
    return found
