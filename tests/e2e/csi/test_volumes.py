"""The CSI node plugin, with the tests playing kubelet: the plugin on a unix socket, called over
gRPC with the fields and in the order kubelet uses for ephemeral inline volumes, against the real
registry, with real FUSE and real bind mounts under the test's folder."""

from __future__ import annotations

import hashlib
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelkitfs.csi.protocol import messages
from tests.conftest import NESTED_KITFILE, MiB, assert_same_tree, write
from tests.support.csi_plugin import NODE, Plugin, Pod, error_of, mounted
from tests.support.kitbuilder import build_modelkit, expected_tree, push, selected_tree
from tests.support.registry_proxy import CountingProxy
from tests.support.registry_server import free_port


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


@pytest.fixture(scope="module")
def orphan(tmp_path_factory: pytest.TempPathFactory, registry: str, proxy: CountingProxy) -> str:
    """A kit whose model.path names a kit that does not exist."""
    source = tmp_path_factory.mktemp("orphan")
    write(source / "lora.bin", b"lora")
    kitfile = {
        "manifestVersion": "1.0.0",
        "model": {"path": f"{proxy.address}/csi/nothing:v1", "parts": [{"path": "lora.bin"}]},
    }
    push(registry, "csi/orphan", "v1", build_modelkit(source, kitfile))
    return f"{proxy.address}/csi/orphan:v1"


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
        (  # the kit is there, the one its model.path names is not
            {"reference": "{proxy}/csi/orphan:v1"},
            "NOT_FOUND",
            "the node service cannot show {proxy}/csi/orphan:v1: No such file or directory",
        ),
        (
            {"reference": "{proxy}/csi/orphan:v1", "filter": "model"},
            "NOT_FOUND",
            "{proxy}/csi/orphan:v1: {proxy}/csi/nothing:v1 not found (HTTP 404): check the",
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
    orphan: str,
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
