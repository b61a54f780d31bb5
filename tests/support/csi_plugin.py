"""The CSI node plugin as the DaemonSet runs it (the documented ``modelkitfs csi`` command),
and pods as kubelet calls it for them: the fields and order it uses for ephemeral inline
volumes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelkitfs.csi.protocol import messages, services
from tests.support.waiting import wait_for

NODE = "node-1"


class Plugin:
    """The plugin of one test module, as the DaemonSet runs it, and a client as kubelet is."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "csi" / "csi.sock"
        self.state = base / "state"
        self.cache = base / "cache"
        self.log_path = base / "plugin.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        command = [  # as README gives it: 'modelkitfs csi ...'
            *(sys.executable, "-m", "modelkitfs.cli", "csi"),
            *("--endpoint", f"unix://{self.socket}", "--node-id", NODE),
            *("--state-dir", str(self.state), "--cache-dir", str(self.cache)),
            *("--plain-http", "--timeout", "10", "--log-level", "debug"),
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        ready = grpc.channel_ready_future(self.channel)
        process = self.process
        wait_for(lambda: ready.done() or process.poll() is not None, "the plugin to listen")
        assert process.poll() is None, f"the plugin stopped: {self.log}"
        self.node = services.NodeStub(self.channel)
        self.identity = services.IdentityStub(self.channel)

    def kill(self) -> None:
        """As a crash or a container restart: no chance to clean anything up."""
        assert self.process is not None
        self.channel.close()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.channel.close()
            self.process.terminate()
            self.process.wait(timeout=30)
        # The node service the plugin started outlives it, by design: tests stop it.
        subprocess.run(["umount", "-l", str(self.state / "kits")], capture_output=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text()


class Pod:
    """A pod with one inline volume, and what kubelet sends for it."""

    def __init__(self, base: Path, name: str, attributes: dict[str, str], **secrets: str) -> None:
        self.uid = hashlib.sha256(name.encode()).hexdigest()[:8] + "-pod"
        self.name = name
        self.attributes = attributes
        self.secrets = secrets
        self.volume_id = "csi-" + hashlib.sha256(f"{self.uid}/kit".encode()).hexdigest()
        volumes = base / "pods" / self.uid / "volumes" / "kubernetes.io~csi"
        volumes.mkdir(parents=True, exist_ok=True)  # kubelet makes the parent, the plugin the rest
        self.target = volumes / "kit" / "mount"
        self.target.parent.mkdir(exist_ok=True)

    def publish_request(self, **changes: Any) -> Any:
        context = {
            **self.attributes,
            "csi.storage.k8s.io/pod.name": self.name,
            "csi.storage.k8s.io/pod.namespace": "default",
            "csi.storage.k8s.io/pod.uid": self.uid,
            "csi.storage.k8s.io/serviceAccount.name": "default",
            "csi.storage.k8s.io/ephemeral": "true",
        }
        capability = messages.VolumeCapability(
            mount=messages.VolumeCapability.MountVolume(),
            access_mode=messages.VolumeCapability.AccessMode(mode=1),  # SINGLE_NODE_WRITER
        )
        fields = {
            "volume_id": self.volume_id,
            "target_path": str(self.target),
            "volume_capability": capability,
            "readonly": True,
            "secrets": self.secrets,
            "volume_context": context,
            **changes,
        }
        return messages.NodePublishVolumeRequest(**fields)

    def unpublish_request(self) -> Any:
        return messages.NodeUnpublishVolumeRequest(
            volume_id=self.volume_id, target_path=str(self.target)
        )


def mounted(path: Path) -> bool:
    return os.path.ismount(path)


def error_of(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=120)
    return raised.value.code(), raised.value.details()


def node_service_pid(plugin: Plugin) -> int:
    """The node service the plugin started (and said so in its log)."""
    found = re.findall(r"node service serving \S+ \(pid (\d+)\)", plugin.log)
    assert found, plugin.log
    return int(found[-1])


@contextlib.contextmanager
def running_plugin(base: Path) -> Iterator[Plugin]:
    """The plugin of one test module, stopped at its end."""
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: FUSE tests need it")
    handle = Plugin(base)
    try:
        yield handle
    finally:
        handle.stop()


@contextlib.contextmanager
def pods_of(plugin: Plugin) -> Iterator[list[Pod]]:
    """Pods of one test; whatever they left published is unpublished (lazily) at its end."""
    made: list[Pod] = []
    try:
        yield made
    finally:
        for pod in made:
            with contextlib.suppress(grpc.RpcError):
                plugin.node.NodeUnpublishVolume(pod.unpublish_request(), timeout=60)
            subprocess.run(["umount", "-l", str(pod.target)], capture_output=True)
