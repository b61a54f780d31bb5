"""The CSI plugin's gRPC side: the Identity and Node services over :class:`Volumes`, served on
a unix socket. Requests are logged by volume and target, never with their secrets. A publish or
unpublish answers before its caller's deadline (kubelet's), whatever the node service does, and
``Probe`` is ready only while the node service answers: no worker waits on it unbounded."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import NoReturn

import grpc
from google.protobuf.wrappers_pb2 import BoolValue

from modelkitfs import __version__
from modelkitfs.cache import default_cache_dir
from modelkitfs.csi.node_service import NodeService
from modelkitfs.csi.protocol import messages, services
from modelkitfs.csi.records import Records
from modelkitfs.csi.volumes import CALL_TIMEOUT, VolumeError, Volumes, code_of
from modelkitfs.daemon.process import configure_logging
from modelkitfs.errors import ModelKitFSError
from modelkitfs.session.options import SIGNING_FIELDS, MountOptions, signing_environment

log = logging.getLogger("modelkitfs.csi")

PLUGIN_NAME = "modelkitfs.csi.kitops.org"
WORKERS = 8
STOP_GRACE = 5.0
MARGIN = 1.0  # seconds before the caller's deadline that an answer is sent


def _fail(context: grpc.ServicerContext, error: ModelKitFSError) -> NoReturn:
    code = code_of(error)
    log.warning("%s: %s", code, error)
    context.abort(grpc.StatusCode[code], str(error))
    raise AssertionError("abort returns by raising")  # pragma: no cover


class Identity(services.IdentityServicer):
    def __init__(self, service: NodeService) -> None:
        self.service = service

    def GetPluginInfo(
        self, request: messages.GetPluginInfoRequest, context: grpc.ServicerContext
    ) -> messages.GetPluginInfoResponse:
        return messages.GetPluginInfoResponse(name=PLUGIN_NAME, vendor_version=__version__)

    def GetPluginCapabilities(
        self, request: messages.GetPluginCapabilitiesRequest, context: grpc.ServicerContext
    ) -> messages.GetPluginCapabilitiesResponse:
        return messages.GetPluginCapabilitiesResponse()  # a node plugin only: no controller

    def Probe(
        self, request: messages.ProbeRequest, context: grpc.ServicerContext
    ) -> messages.ProbeResponse:
        return messages.ProbeResponse(ready=BoolValue(value=self.service.alive()))


class Node(services.NodeServicer):
    def __init__(self, volumes: Volumes, node_id: str) -> None:
        self.volumes = volumes
        self.node_id = node_id

    def NodeGetInfo(
        self, request: messages.NodeGetInfoRequest, context: grpc.ServicerContext
    ) -> messages.NodeGetInfoResponse:
        return messages.NodeGetInfoResponse(node_id=self.node_id)

    def NodeGetCapabilities(
        self, request: messages.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> messages.NodeGetCapabilitiesResponse:
        return messages.NodeGetCapabilitiesResponse()  # no staging, stats or expansion

    def NodePublishVolume(
        self, request: messages.NodePublishVolumeRequest, context: grpc.ServicerContext
    ) -> messages.NodePublishVolumeResponse:
        log.debug("publish %s at %s", request.volume_id, request.target_path)
        try:
            capability = request.volume_capability
            if not request.HasField("volume_capability"):
                raise VolumeError("INVALID_ARGUMENT", "the request has no volume_capability")
            if capability.HasField("block"):
                raise VolumeError(
                    "INVALID_ARGUMENT", "a kit is a folder: use a mount volume, not a block one"
                )
            self.volumes.publish(
                request.volume_id,
                request.target_path,
                dict(request.volume_context),
                dict(request.secrets),
                _seconds(context),
            )
        except ModelKitFSError as exc:
            _fail(context, exc)
        except OSError as exc:
            _fail(context, VolumeError("INTERNAL", f"publishing {request.target_path}: {exc}"))
        return messages.NodePublishVolumeResponse()

    def NodeUnpublishVolume(
        self, request: messages.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> messages.NodeUnpublishVolumeResponse:
        log.debug("unpublish %s from %s", request.volume_id, request.target_path)
        try:
            self.volumes.unpublish(request.volume_id, request.target_path, _seconds(context))
        except ModelKitFSError as exc:
            _fail(context, exc)
        except OSError as exc:
            _fail(context, VolumeError("INTERNAL", f"unpublishing {request.target_path}: {exc}"))
        return messages.NodeUnpublishVolumeResponse()


def _seconds(context: grpc.ServicerContext) -> float:
    """How long a call may take: until just before its caller gives up."""
    remaining = context.time_remaining()
    if remaining is None:
        return CALL_TIMEOUT
    return min(CALL_TIMEOUT, max(remaining - MARGIN, remaining / 2))


def _socket_path(endpoint: str) -> str:
    if not endpoint.startswith("unix://"):
        raise ModelKitFSError(
            f"--endpoint {endpoint!r} is not a unix socket: write unix:///csi/csi.sock"
        )
    path = "/" + endpoint.removeprefix("unix://").lstrip("/")
    return path


def serve(arguments: argparse.Namespace) -> int:
    """Serve the plugin's gRPC services with ``arguments`` (:func:`modelkitfs.csi.add_arguments`)
    until SIGTERM or SIGINT."""
    configure_logging(arguments.log_level)
    try:
        socket_path = _socket_path(arguments.endpoint)
        signing = {name: getattr(arguments, name) for name in SIGNING_FIELDS}
        options = MountOptions(
            plain_http=arguments.plain_http,
            tls_verify=arguments.tls_verify == "true",
            tls_cert=arguments.tls_cert,
            cert=arguments.cert,
            key=arguments.key,
            proxy=arguments.proxy,
            mirrors=arguments.mirror,
            # One folder for the node service and every mount, whatever their working folder.
            cache_dir=os.path.abspath(arguments.cache_dir or default_cache_dir()),
            cache_max_size=arguments.cache_max_size,
            timeout=arguments.timeout,
            log_level=arguments.log_level.upper(),
            allow_other=True,  # the pods' processes run as any user
            allow_local=arguments.allow_local,  # none of the node's files unless listed
            # Whose signatures every volume's kit needs (README, Signed kits).
            **{**signing, **signing_environment(signing)},
        )
        options.check()
    except ModelKitFSError as exc:
        log.error("%s", exc)
        return 2
    state = Path(arguments.state_dir)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    if arguments.serve_root:
        service = NodeService(arguments.serve_root, None, None)
    else:
        service = NodeService(str(state / "kits"), options, state / "node-service.log")
    if service.owned:
        try:
            service.ensure()
        except ModelKitFSError as exc:  # publish tries again; Probe says not ready meanwhile
            log.error("%s", exc)
    volumes = Volumes(Records(state / "volumes"), service, options)
    threading.Thread(target=volumes.recover, name="recover", daemon=True).start()  # may hang
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
    services.add_IdentityServicer_to_server(Identity(service), server)
    services.add_NodeServicer_to_server(Node(volumes, arguments.node_id), server)
    if os.path.exists(socket_path):
        os.unlink(socket_path)  # left by a plugin that was killed
    os.makedirs(os.path.dirname(socket_path), exist_ok=True)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    log.info("CSI plugin %s listening on %s (node %s)", PLUGIN_NAME, socket_path, arguments.node_id)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    server.stop(STOP_GRACE).wait()
    log.info("stopped; published volumes stay readable")
    return 0
