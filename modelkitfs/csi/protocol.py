"""The CSI messages and services, generated from ``csi.proto``, under the two names the plugin
uses: ``messages`` (``csi_pb2``) and ``services`` (``csi_pb2_grpc``).

The ``.proto`` file in this package is the source; ``scripts/generate-csi`` writes the modules
and their type stubs (protoc through grpcio-tools, mypy-protobuf), so that a user needs no
compiler at run time and mypy checks every message the plugin reads or builds. A test
regenerates them and fails when they differ from what is committed.
"""

from __future__ import annotations

from modelkitfs.csi import csi_pb2 as messages
from modelkitfs.csi import csi_pb2_grpc as services

__all__ = ["messages", "services"]
