"""A Kubernetes CSI node plugin: a kit as an ephemeral inline volume of a pod.

``modelkitfs csi --endpoint unix:///csi/csi.sock --node-id NODE`` (or ``python -m
modelkitfs.csi`` with the same arguments) serves the CSI Identity and Node services
(:mod:`modelkitfs.csi.plugin`). A volume that asks for the whole kit is a read-only bind mount
of the node service's ``ROOT/REF`` (``modelkitfs serve``), so every pod of the node shares one
daemon and one download; one with a filter, index labels or credentials of its own gets a mount
of its own over the same cache (:mod:`.volumes`). The arguments are declared here, where gRPC is
not loaded, so that the ``modelkitfs`` command parses them as its own.

gRPC and protobuf are the ``csi`` extra (``pip install 'modelkitfs[csi]'``): nothing but the
plugin needs them, so both entry points say so in one line when they are missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelkitfs.errors import ModelKitFSError
from modelkitfs.options import MountOptions, signing_arguments

DEFAULT_STATE_DIR = "/var/lib/modelkitfs-csi"
EXTRA = {"grpc": "grpcio", "google": "protobuf"}  # the extra's packages by what they import


class MissingExtra(ModelKitFSError):
    """The plugin's own dependencies (the ``csi`` extra) are not installed."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The plugin's options, on ``p``."""
    p.add_argument("--endpoint", required=True, help="where to listen: unix:///csi/csi.sock")
    p.add_argument("--node-id", required=True, help="this node's name (spec.nodeName)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="records of the volumes")
    p.add_argument(
        "--serve-root",
        help="the root of a running 'modelkitfs serve' to bind shared volumes from "
        "(default: start one on STATE_DIR/kits)",
    )
    p.add_argument("--cache-dir", help="the shared cache (default as for mount)")
    p.add_argument("--cache-max-size", help="evict beyond this (500M, 20G)")
    p.add_argument("--plain-http", action="store_true", help="plain HTTP to registries")
    p.add_argument("--tls-verify", default="true", choices=["true", "false"])
    p.add_argument("--tls-cert", help="also trust these CAs")
    p.add_argument("--cert", help="client certificate")
    p.add_argument("--key", help="client certificate's key")
    p.add_argument("--proxy", help="HTTP(S) proxy")
    p.add_argument("--mirror", action="append", default=[], help="mirror to try first")
    p.add_argument(
        "--allow-local",
        action="append",
        default=[],
        metavar="DIR",
        help="also serve kits from OCI layouts or kit's local storage inside this folder "
        "(repeatable; default none: registries only, see README's Security)",
    )
    p.add_argument("--timeout", type=float, default=MountOptions().timeout, help="seconds")
    signing_arguments(p, policy=True)  # the node's signature policy, for every volume
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m modelkitfs.csi ...``: serve until SIGTERM or SIGINT."""
    p = argparse.ArgumentParser(
        prog="modelkitfs csi",
        description="Kubernetes CSI node plugin: a kit as a pod's ephemeral inline volume.",
    )
    add_arguments(p)
    try:
        return run(p.parse_args(argv))
    except MissingExtra as exc:
        print(f"modelkitfs csi: error: {exc}", file=sys.stderr)
        return 1


def run(arguments: argparse.Namespace) -> int:
    """Serve with ``arguments`` (those of :func:`add_arguments`), as ``modelkitfs csi`` does.

    Raises :class:`MissingExtra` when gRPC or protobuf cannot be imported."""
    try:
        from modelkitfs.csi.plugin import serve  # gRPC loads only when serving
    except ModuleNotFoundError as exc:
        missing = EXTRA.get((exc.name or "").partition(".")[0])
        if missing is None:
            raise
        raise MissingExtra(
            f"the CSI plugin needs grpcio and protobuf, and {missing} is not installed: "
            "install modelkitfs[csi] (pip install 'modelkitfs[csi]')"
        ) from None
    return serve(arguments)
