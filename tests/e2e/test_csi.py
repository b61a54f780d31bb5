"""The CSI node plugin, with the tests playing kubelet: the plugin on a unix socket, called over
gRPC with the fields and in the order kubelet uses for ephemeral inline volumes, against the real
registry, with real FUSE and real bind mounts under the test's folder."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from modelkitfs.csi.protocol import messages, services
from tests.conftest import NESTED_KITFILE, MiB, assert_same_tree, write
from tests.support.kitbuilder import build_modelkit, expected_tree, push, selected_tree
from tests.support.registry_proxy import CountingProxy
from tests.support.registry_server import RegistryAuth, free_port, running_registry

NODE = "node-1"
READY_TIMEOUT = 60.0
PASSWORD = "s3cret-Pa55"  # the test registry's
USERS = {"ada": PASSWORD}


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
        grpc.channel_ready_future(self.channel).result(timeout=READY_TIMEOUT)
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


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: FUSE tests need it")
    handle = Plugin(tmp_path_factory.mktemp("csi"))
    yield handle
    handle.stop()


@pytest.fixture
def pods(tmp_path: Path, plugin: Plugin) -> Iterator[list[Pod]]:
    """Pods of one test; whatever they left published is unpublished (lazily) at its end."""
    made: list[Pod] = []
    yield made
    for pod in made:
        with contextlib.suppress(grpc.RpcError):
            plugin.node.NodeUnpublishVolume(pod.unpublish_request(), timeout=60)
        subprocess.run(["umount", "-l", str(pod.target)], capture_output=True)


@pytest.fixture(scope="module")
def nested(nested_source: Path, registry: str, proxy: CountingProxy) -> tuple[str, Any]:
    """The nested kit, as pods name it: through the counting proxy."""
    kit = build_modelkit(nested_source, NESTED_KITFILE)
    push(registry, "csi/nested", "v1", kit)
    push(registry, "csi/nested", "latest", kit)
    return f"{proxy.address}/csi/nested:v1", kit


def test_two_pods_share_one_node_service_and_one_download(
    plugin: Plugin, pods: list[Pod], nested, nested_source: Path, proxy: CountingProxy
) -> None:
    reference, kit = nested
    info = plugin.node.NodeGetInfo(messages.NodeGetInfoRequest())
    assert info.node_id == NODE
    assert plugin.node.NodeGetCapabilities(messages.NodeGetCapabilitiesRequest()).capabilities == []
    plugin_info = plugin.identity.GetPluginInfo(messages.GetPluginInfoRequest())
    assert plugin_info.name == "modelkitfs.csi.kitops.org"
    assert plugin.identity.Probe(messages.ProbeRequest()).ready.value
    proxy.reset()
    a, b = (Pod(plugin.base, name, {"reference": reference}) for name in ("a", "b"))
    pods += [a, b]
    with futures.ThreadPoolExecutor(2) as pool:  # kubelet starts both pods at once
        list(pool.map(lambda pod: plugin.node.NodePublishVolume(pod.publish_request()), (a, b)))
    assert mounted(a.target) and mounted(b.target)
    # Publishing fetched the manifest (the tag resolved, then the kit by digest) and the
    # config, for both pods at once, and no layer.
    assert proxy.manifest_requests <= 2
    assert proxy.blobs_fetched == {"sha256:" + hashlib.sha256(kit.config).hexdigest()}
    expected = expected_tree(nested_source, NESTED_KITFILE)
    assert_same_tree(a.target, nested_source, expected)
    fetched = proxy.blob_bytes
    assert fetched <= sum(len(blob) for blob in kit.blobs.values()) + 2 * MiB  # once, by blocks
    assert_same_tree(b.target, nested_source, expected)
    assert proxy.blob_bytes == fetched  # the second pod downloaded nothing
    # A filtered volume is a mount of its own, over the same cache: nothing downloaded again.
    c = Pod(plugin.base, "c", {"reference": reference, "filter": "model"})
    pods.append(c)
    plugin.node.NodePublishVolume(c.publish_request(), timeout=120)
    selected = selected_tree(nested_source, NESTED_KITFILE, ["main-dir", "./parts/adapter.bin"])
    assert_same_tree(c.target, nested_source, selected, kitfile=False)
    assert proxy.blob_bytes == fetched
    # Read-only, for root too.
    with pytest.raises(OSError):
        (a.target / "new.txt").write_bytes(b"no")
    for pod in (a, b, c):
        plugin.node.NodeUnpublishVolume(pod.unpublish_request(), timeout=60)
        assert not pod.target.exists()
        plugin.node.NodeUnpublishVolume(pod.unpublish_request(), timeout=60)  # again: fine


@pytest.mark.parametrize(
    ("filters", "selected", "kitfile"),
    [
        ("model", ["main-dir", "./parts/adapter.bin"], False),
        ("model;datasets:fr", ["main-dir", "./parts/adapter.bin", "données/"], False),
        ("docs:./docs/guide.md;kitfile", ["./docs/guide.md"], True),
    ],
)
def test_a_filtered_volume_is_what_kit_unpack_filter_writes(
    plugin: Plugin,
    pods: list[Pod],
    nested,
    nested_source: Path,
    filters: str,
    selected: list[str],
    kitfile: bool,
) -> None:
    reference, _ = nested
    pod = Pod(plugin.base, f"filtered-{len(filters)}", {"reference": reference, "filter": filters})
    pods.append(pod)
    plugin.node.NodePublishVolume(pod.publish_request(), timeout=120)
    expected = selected_tree(nested_source, NESTED_KITFILE, selected)
    assert_same_tree(pod.target, nested_source, expected, kitfile=kitfile)
    plugin.node.NodeUnpublishVolume(pod.unpublish_request(), timeout=60)
    assert not pod.target.exists()


def test_publish_and_unpublish_are_idempotent_and_conflicts_refused(
    plugin: Plugin, pods: list[Pod], nested
) -> None:
    reference = nested[0].removesuffix(":v1")  # no tag: latest, as kit reads it
    pod = Pod(plugin.base, "idem", {"reference": reference})
    pods.append(pod)
    plugin.node.NodePublishVolume(pod.publish_request(), timeout=120)
    plugin.node.NodePublishVolume(pod.publish_request(), timeout=120)  # the same again: fine
    assert mounted(pod.target)
    other = {"reference": reference, "filter": "model"}
    changed = pod.publish_request(volume_context={**other, "csi.storage.k8s.io/ephemeral": "true"})
    code, details = error_of(plugin.node.NodePublishVolume, changed)
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert details.startswith(f"{pod.target} is published as volume {pod.volume_id}")
    code, _ = error_of(plugin.node.NodePublishVolume, pod.publish_request(volume_id="csi-other"))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert (pod.target / "README.md").read_bytes() == b"# nested\n"  # still serving
    plugin.node.NodeUnpublishVolume(pod.unpublish_request(), timeout=60)
    plugin.node.NodeUnpublishVolume(pod.unpublish_request(), timeout=60)
    never = Pod(plugin.base, "never-published", {"reference": reference})
    plugin.node.NodeUnpublishVolume(never.unpublish_request(), timeout=60)


@pytest.mark.parametrize(
    ("attributes", "code", "message"),
    [
        ({}, "INVALID_ARGUMENT", "the volume has no 'reference' attribute: set volumeAttributes"),
        ({"reference": "Not A/ref"}, "INVALID_ARGUMENT", "volume attribute 'reference': invalid"),
        (
            {"reference": "../etc/kit:v1"},
            "INVALID_ARGUMENT",
            "volume attribute 'reference' '../etc/kit:v1': '..' is no registry host",
        ),
        (
            {"reference": "{proxy}/csi/nested:v1", "filter": "weights"},
            "INVALID_ARGUMENT",
            "volume attribute 'filter' or 'label': Invalid filter 'weights'",
        ),
        (
            {"reference": "{proxy}/csi/nested:v1", "plainHttp": "true"},
            "INVALID_ARGUMENT",
            "unknown volume attribute(s) plainHttp: use reference, filter, label, plainHTTP",
        ),
        (
            {"reference": "{proxy}/csi/nested:v1", "timeout": "soon"},
            "INVALID_ARGUMENT",
            "volume attribute 'timeout' is 'soon': write a positive number of seconds",
        ),
        ({"reference": "{proxy}/csi/nothing:v1"}, "NOT_FOUND", "{proxy}/csi/nothing:v1: "),
        (
            {"reference": "{proxy}/csi/nothing:v1", "filter": "model"},
            "NOT_FOUND",
            "{proxy}/csi/nothing:v1: ",
        ),
        (
            {"reference": "127.0.0.1:{closed}/csi/nested:v1", "timeout": "1"},
            "UNAVAILABLE",
            "127.0.0.1:{closed}/csi/nested:v1: ",
        ),
    ],
)
def test_each_failure_has_its_code_and_a_message_that_says_what_to_do(
    plugin: Plugin,
    pods: list[Pod],
    nested,
    proxy: CountingProxy,
    attributes: dict[str, str],
    code: str,
    message: str,
) -> None:
    closed = free_port()
    fill = {"proxy": proxy.address, "closed": closed}
    attributes = {key: value.format(**fill) for key, value in attributes.items()}
    pod = Pod(plugin.base, f"failing-{len(pods)}-{code}", attributes)
    pods.append(pod)
    found, details = error_of(plugin.node.NodePublishVolume, pod.publish_request())
    assert found == grpc.StatusCode[code], details
    assert details.startswith(message.format(**fill)), details
    assert "Traceback" not in details and "\n" not in details
    assert not mounted(pod.target)


def test_a_block_volume_is_refused(plugin: Plugin, pods: list[Pod], nested) -> None:
    pod = Pod(plugin.base, "block", {"reference": nested[0]})
    pods.append(pod)
    block = messages.VolumeCapability(block=messages.VolumeCapability.BlockVolume())
    code, details = error_of(
        plugin.node.NodePublishVolume, pod.publish_request(volume_capability=block)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "a kit is a folder: use a mount volume, not a block one"


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    """A registry that wants a login, holding a one-file kit: (reference, the file's bytes)."""
    directory = tmp_path_factory.mktemp("private")
    (directory / "registry").mkdir()
    with running_registry(directory / "registry", htpasswd=USERS) as address:
        data = np.random.default_rng(23).bytes(2 * MiB + 5)
        write(directory / "kit" / "weights.bin", data)
        kitfile = {"manifestVersion": "1.0.0", "model": {"path": "weights.bin"}}
        push(
            address,
            "csi/private",
            "v1",
            build_modelkit(directory / "kit", kitfile),
            auth=RegistryAuth("ada", PASSWORD),
        )
        yield f"{address}/csi/private:v1", data


def test_credentials_come_from_the_secret_and_are_never_written(
    plugin: Plugin, pods: list[Pod], private: tuple[str, bytes]
) -> None:
    reference, data = private
    registry = reference.split("/")[0]
    auth = base64.b64encode(f"ada:{PASSWORD}".encode()).decode()
    docker = json.dumps({"auths": {registry: {"auth": auth}}})
    with_password = Pod(
        plugin.base, "login", {"reference": reference}, username="ada", password=PASSWORD
    )
    with_docker = Pod(
        plugin.base, "docker", {"reference": reference}, **{".dockerconfigjson": docker}
    )
    pods += [with_password, with_docker]
    for pod in (with_password, with_docker):
        plugin.node.NodePublishVolume(pod.publish_request(), timeout=120)
        assert (pod.target / "weights.bin").read_bytes() == data
    refused = Pod(
        plugin.base, "refused", {"reference": reference}, username="ada", password="wrong"
    )
    anonymous = Pod(plugin.base, "anonymous", {"reference": reference})
    pods += [refused, anonymous]
    for pod in (refused, anonymous):
        code, details = error_of(plugin.node.NodePublishVolume, pod.publish_request())
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        assert details.startswith(f"{reference}: registry {registry} "), details
    # Never in a file under the plugin's state or cache, nor in any process's command line.
    secret = PASSWORD.encode()
    for folder in (plugin.state, plugin.cache):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_relative_to(plugin.state / "kits"):
                assert secret not in path.read_bytes(), path
    assert secret not in plugin.log_path.read_bytes()
    for process in Path("/proc").iterdir():
        if process.name.isdigit():
            try:
                assert secret not in (process / "cmdline").read_bytes()
            except OSError:
                continue
    for path in plugin.state.joinpath("volumes").glob("*.json"):
        assert path.stat().st_mode & 0o077 == 0


def test_a_restarted_plugin_keeps_volumes_readable_and_unpublishable(
    plugin: Plugin, pods: list[Pod], nested, nested_source: Path
) -> None:
    reference, _ = nested
    shared = Pod(plugin.base, "restart-shared", {"reference": reference})
    own = Pod(plugin.base, "restart-own", {"reference": reference, "filter": "datasets:train"})
    pods += [shared, own]
    for pod in (shared, own):
        plugin.node.NodePublishVolume(pod.publish_request(), timeout=120)
    plugin.kill()
    plugin.start()
    assert plugin.log.count("node service serving") == 1  # the restarted plugin kept using it
    train = nested_source / "main-dir/subdir/train.csv"
    assert (shared.target / "main-dir/subdir/train.csv").read_bytes() == train.read_bytes()
    assert (own.target / "main-dir/subdir/train.csv").read_bytes() == train.read_bytes()
    for pod in (shared, own):  # kubelet may publish again after a restart: the same answer
        plugin.node.NodePublishVolume(pod.publish_request(), timeout=120)
    for pod in (shared, own):
        plugin.node.NodeUnpublishVolume(pod.unpublish_request(), timeout=60)
        assert not pod.target.exists()
