"""The ``modelkitfs`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from typing import Any

from modelkitfs import __version__
from modelkitfs.commands import (
    bash_completion,
    run_cache_command,
    run_inspect,
    run_ls,
    run_mounts,
    run_prefetch,
)
from modelkitfs.errors import ModelKitFSError
from modelkitfs.mount import mount, mount_foreground, unmount
from modelkitfs.options import DEFAULT_TIMEOUT, MountOptions

KIT = "registry.example:5000/team/llm:v1"
EXAMPLES = {
    "mount": f"""
  modelkitfs mount {KIT} /mnt/llm
  modelkitfs mount --plain-http 127.0.0.1:5000/demo/kit:latest /mnt/kit --foreground
  modelkitfs mount -f model -f datasets:validation {KIT} /mnt/llm
  modelkitfs mount -l quantization=q4_0 registry.example:5000/team/llm:all /mnt/llm
  modelkitfs mount --prefetch model --timeout 120 {KIT} /mnt/llm""",
    "umount": """
  modelkitfs umount /mnt/llm
  modelkitfs umount --lazy /mnt/llm     # busy: detach now, stop once the last file closes""",
    "prefetch": f"""
  modelkitfs prefetch {KIT}
  modelkitfs prefetch -f model --cache-dir /var/cache/modelkitfs {KIT}""",
    "inspect": f"""
  modelkitfs inspect {KIT}
  modelkitfs inspect --json {KIT} | jq '.layers[].digest'""",
    "ls": f"""
  modelkitfs ls {KIT}
  modelkitfs ls -l {KIT} data/
  modelkitfs ls --json {KIT} model""",
    "mounts": """
  modelkitfs mounts
  modelkitfs mounts --json""",
    "cache": """
  modelkitfs cache info
  modelkitfs cache ls
  modelkitfs cache verify
  modelkitfs cache prune --max-size 20G""",
    "completion": """
  source <(modelkitfs completion bash)
  modelkitfs completion bash > /etc/bash_completion.d/modelkitfs""",
}


def _examples(*commands: str) -> str:
    return "examples:" + "".join(EXAMPLES[command] for command in commands) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelkitfs",
        description="Mount a KitOps ModelKit as a lazy, read-only folder.",
        epilog=_examples("mount", "inspect", "ls", "umount", "prefetch", "cache"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"modelkitfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=description,
            epilog=_examples(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )

    m = command(
        "mount",
        "mount a ModelKit",
        "Mount REFERENCE (registry/repository[:tag][@sha256:digest]) at MOUNTPOINT. "
        "Returns once the folder is mounted; the daemon keeps running in the background.",
    )
    m.add_argument("reference", metavar="REFERENCE")
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    _kit_arguments(m)
    m.add_argument(
        "--prefetch",
        choices=["none", "model", "all"],
        default="none",
        help="after mounting, fill the cache in the background with the model (and its parts) "
        "or the whole kit; reads meanwhile share its downloads (default none: lazy only)",
    )
    m.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached, log to stderr, unmount on Ctrl-C or SIGTERM",
    )
    m.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users read the mount (needs user_allow_other in /etc/fuse.conf "
        "unless root)",
    )
    m.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="default: info",
    )

    u = command(
        "umount",
        "unmount a mounted ModelKit",
        "Unmount MOUNTPOINT, also when its daemon has died.",
        aliases=["unmount"],
    )
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument(
        "--lazy",
        "-z",
        action="store_true",
        help="detach now even if busy; clean up when the last user leaves",
    )

    p = command(
        "prefetch",
        "fill the cache with a ModelKit ahead of mounts",
        "Download and verify REFERENCE (or the part --filter selects) into the shared cache, "
        "so later mounts on this machine read without the network.",
    )
    p.add_argument("reference", metavar="REFERENCE")
    _kit_arguments(p)

    i = command(
        "inspect",
        "show a ModelKit's Kitfile and layers without mounting",
        "Show REFERENCE from its manifest and config alone (no layer is fetched): package, "
        "model, datasets, code, docs, and each layer with its media type, size, compression, "
        "digest and how much of it is cached.",
    )
    i.add_argument("reference", metavar="REFERENCE")
    _json_argument(i)
    _kit_arguments(i)

    ls = command(
        "ls",
        "list a folder of a ModelKit without mounting",
        "List PATH (default: the kit's root) of REFERENCE, as a mount would show it. The "
        "first listing of a layer reads its tar headers (a progress line shows while that is "
        "slow); the index is cached for every later listing and mount.",
    )
    ls.add_argument("reference", metavar="REFERENCE")
    ls.add_argument("path", metavar="PATH", nargs="?", default="")
    ls.add_argument("-l", "--long", action="store_true", help="mode and size too")
    _json_argument(ls)
    _kit_arguments(ls, label_flags=("--label",))

    mounts = command(
        "mounts",
        "list the ModelKits mounted on this machine",
        "List active modelkitfs mounts: mountpoint, reference, bytes fetched, cache hits.",
    )
    _json_argument(mounts)

    c = command(
        "cache",
        "inspect and manage the shared cache",
        "Safe while mounts run: what they lose is downloaded again.",
    )
    c.add_argument("action", choices=["info", "ls", "verify", "prune", "clear"])
    _cache_dir_argument(c)
    c.add_argument("--max-size", metavar="SIZE", help="prune: evict down to this size (e.g. 20G)")

    completion = command(
        "completion",
        "print a shell completion script",
        "Print a bash completion script for modelkitfs (commands and options).",
    )
    completion.add_argument("shell", choices=["bash"])
    return parser


def _json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _kit_arguments(
    parser: argparse.ArgumentParser, label_flags: tuple[str, ...] = ("--label", "-l")
) -> None:
    """What selects a kit and how to reach it: shared by mount and prefetch."""
    parser.add_argument(
        "--filter",
        "-f",
        dest="filters",
        action="append",
        default=[],
        metavar="FILTER",
        help="only part of the kit, as 'kit unpack --filter' unpacks it: "
        "TYPES[:IDS] with types kitfile, model, datasets, code, prompts, docs, mcpservers and "
        "ids matching an entry's name or path as written in the Kitfile "
        "(e.g. -f model,datasets, -f datasets:validation, -f docs:./README.md); repeatable, "
        "an entry is in when any filter matches; filtered-out layers are never fetched",
    )
    parser.add_argument(
        *label_flags,
        dest="labels",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pick the ModelKit of a ModelKit index whose labels match (repeatable)",
    )
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
        "--proxy", metavar="URL", help="HTTP(S) proxy (default $HTTPS_PROXY, honouring $NO_PROXY)"
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
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="a read that cannot be served within this fails with an I/O error rather than "
        "hang; failed requests are retried within it (default %(default)g)",
    )
    cache = parser.add_argument_group("cache")
    _cache_dir_argument(cache)
    cache.add_argument(
        "--cache-max-size",
        metavar="SIZE",
        help="evict least recently used blocks beyond this (e.g. 50G; default half the "
        "cache's file system); 5%% of the disk is always kept free",
    )
    cache.add_argument(
        "--verify",
        choices=["complete", "full"],
        default="complete",
        help="complete (default): verify each blob once all of it is cached, evicting it on a "
        "mismatch; full: download and verify each layer whole before serving any of it",
    )


def _cache_dir_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the shared cache (default $MODELKITFS_CACHE_DIR, else "
        "$XDG_CACHE_HOME/modelkitfs, else ~/.cache/modelkitfs)",
    )


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


class _OneLine(logging.Formatter):
    """``modelkitfs: warning: ...``, as the command's errors are written."""

    def format(self, record: logging.LogRecord) -> str:
        return f"modelkitfs: {record.levelname.lower()}: {record.getMessage()}"


def _show_warnings() -> None:
    """Warnings of the libraries (a cache that cannot be written, say) as one line each on
    stderr; not for ``mount --foreground``, which logs everything itself."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    handler.setLevel(logging.WARNING)
    package = logging.getLogger("modelkitfs")
    package.addHandler(handler)
    package.setLevel(logging.WARNING)
    package.propagate = False


_EXPECTED = (ModelKitFSError, FileNotFoundError, NotADirectoryError, IsADirectoryError, OSError)


def _expected_failure(exc: BaseException) -> BaseException | None:
    """The error to show of ``exc``: itself when expected, or the first expected error of an
    exception group (tasks failing together) made only of such errors; else None."""
    if isinstance(exc, _EXPECTED):
        return exc
    inner = getattr(exc, "exceptions", None)  # an exception group (Python 3.11 and later)
    if isinstance(inner, tuple):
        found = [_expected_failure(one) for one in inner]
        if found and all(found):
            return found[0]
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.command == "mount" and args.foreground):
        _show_warnings()
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        shown = _expected_failure(exc)
        if shown is None:
            raise
        print(f"modelkitfs: error: {shown}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command in ("mount", "prefetch", "inspect", "ls"):
            # Every such flag is named after its MountOptions field.
            options = MountOptions(
                **{f.name: getattr(args, f.name) for f in fields(MountOptions) if f.name in args}
            )
            if args.command == "prefetch":
                run_prefetch(args.reference, options)
            elif args.command == "inspect":
                run_inspect(args.reference, options, args.json)
            elif args.command == "ls":
                run_ls(args.reference, args.path, options, args.long, args.json)
            elif args.foreground:
                mount_foreground(args.reference, args.mountpoint, options)
            else:
                mount(args.reference, args.mountpoint, options)
        elif args.command == "cache":
            run_cache_command(args.action, args.cache_dir, args.max_size)
        elif args.command == "mounts":
            run_mounts(args.json)
        elif args.command == "completion":
            print(bash_completion(build_parser()))
        else:
            unmount(args.mountpoint, lazy=args.lazy)
    except (ModelKitFSError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        print(f"modelkitfs: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
