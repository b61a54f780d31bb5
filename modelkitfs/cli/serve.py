"""``modelkitfs serve ROOT``: one daemon for every kit, and ``modelkitfs csi``: the Kubernetes
CSI node plugin over it."""

from __future__ import annotations

import argparse

from modelkitfs import csi
from modelkitfs.cli.output import patience
from modelkitfs.cli.parser import Commands, access_arguments, daemon_arguments, options_from
from modelkitfs.mount import serve


def add(commands: Commands) -> None:
    s = commands.add("serve", run_serve)
    s.add_argument("root", metavar="ROOT").complete = {  # type: ignore[attr-defined]
        "bash": "_shtab_compgen_dirs",
        "zsh": "_files -/",
    }
    access_arguments(s, fetches=True, policy=True)
    daemon_arguments(s)
    s.add_argument(
        "--allow-local",
        action="append",
        default=[],
        metavar="DIR",
        help="also serve kits from OCI layouts, or kit's local storage, inside this folder "
        "(repeatable; default none: registries only, see README's Security)",
    )
    for flag, default, what in (
        ("--tag-ttl", 60.0, "ask the registry again what a tag names after this long"),
        ("--negative-ttl", 30.0, "remember a reference the registry does not know this long"),
        ("--idle", 600.0, "unload a kit unused this long (its blocks stay in the cache)"),
    ):
        s.add_argument(
            flag,
            type=float,
            default=default,
            metavar="SECONDS",
            help=f"{what} (default {default:g})",
        )

    c = commands.add("csi", run_csi)
    csi.add_arguments(c)  # the plugin's own, parsed here as any command's
    c.set_defaults(foreground=True)  # it logs everything itself


def run_serve(args: argparse.Namespace) -> None:
    """serve every ModelKit under one folder

    Serve every kit at ROOT: ROOT/REFERENCE/ is the kit REFERENCE names, for any reference
    'mount' takes, loaded on first access. A tag is a symlink to the digest it names (resolved
    at most once per --tag-ttl); folders list what is loaded under them. One daemon, one FUSE
    mount, one cache; 'modelkitfs umount ROOT' stops it.

    examples:
      modelkitfs serve /kits
      ls /kits/{KIT}/
      modelkitfs serve /kits --foreground --allow-other --metrics 127.0.0.1:9464
    """
    options = options_from(args)
    settings = {"tag_ttl": args.tag_ttl, "negative_ttl": args.negative_ttl, "idle": args.idle}
    if args.foreground:
        serve(args.root, options, foreground=True, **settings)
    else:
        with patience("the node service", options.timeout):
            serve(args.root, options, **settings)


def run_csi(args: argparse.Namespace) -> None:
    """run the Kubernetes CSI node plugin

    Serve the CSI Identity and Node services on ENDPOINT (a unix socket), so that pods declare
    kits as ephemeral inline volumes (deploy/kubernetes/).

    examples:
      modelkitfs csi --endpoint unix:///csi/csi.sock --node-id $(hostname)
    """
    raise SystemExit(csi.run(args))  # gRPC loads only now
