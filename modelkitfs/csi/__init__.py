"""A Kubernetes CSI node plugin: a kit as an ephemeral inline volume of a pod.

``python -m modelkitfs.csi --endpoint unix:///csi/csi.sock --node-id NODE`` serves the CSI
Identity and Node services (:mod:`modelkitfs.csi.plugin`). A volume that asks for the whole
kit is a read-only bind mount of the node service's ``ROOT/REF`` (``modelkitfs serve``), so
every pod of the node shares one daemon and one download; one with a filter, index labels or
credentials of its own gets a mount of its own over the same cache (:mod:`.volumes`).
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The plugin's command line (``modelkitfs csi ...``): serve until SIGTERM or SIGINT."""
    from modelkitfs.csi.plugin import main as plugin_main  # gRPC loads only when serving

    return plugin_main(argv)
