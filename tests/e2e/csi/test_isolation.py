"""What a pod's CSI volume reaches, and what cannot stop the plugin: each registry gets its
own credential from the volume's secret and no other's, secrets are never written, and a stopped
node service makes Probe not ready and publishes fail at once, while everything else answers.
The tests play kubelet against the plugin on its socket, with real registries and mounts."""

from __future__ import annotations

import base64
import json
import os
import signal
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelkitfs.csi.protocol import messages
from tests.conftest import MiB, one_file_kit, write
from tests.support.csi_plugin import (
    NODE,
    Plugin,
    Pod,
    error_of,
    mounted,
    node_service_pid,
    pods_of,
    running_plugin,
)
from tests.support.kitbuilder import build_modelkit, push, store_locally
from tests.support.recording_proxy import RecordingProxy
from tests.support.registry_proxy import CountingProxy
from tests.support.registry_server import RegistryAuth, running_registry
from tests.support.waiting import wait_for

PASSWORD = "s3cret-Pa55"  # the test registry's
USERS = {"ada": PASSWORD}


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


BOB = ("bob", "b0b-Pa55")  # the second registry's login


def docker_secret(logins: dict[str, str]) -> dict[str, str]:
    """A kubernetes.io/dockerconfigjson secret: an entry per host of ``logins``."""
    auths = {
        host: {"auth": base64.b64encode(pair.encode()).decode()} for host, pair in logins.items()
    }
    return {".dockerconfigjson": json.dumps({"auths": auths})}


@pytest.fixture(scope="module")
def two_registries(
    tmp_path_factory: pytest.TempPathFactory, private: tuple[str, bytes]
) -> Iterator[tuple[RecordingProxy, RecordingProxy, bytes]]:
    """A kit on the private registry (ada's login) whose model is a kit on a second registry
    (bob's), each registry behind a proxy that records what Authorization reaches it: (the
    first's proxy, the second's, the model's bytes)."""
    directory = tmp_path_factory.mktemp("second")
    (directory / "registry").mkdir()
    with (
        running_registry(directory / "registry", htpasswd=dict([BOB])) as second,
        RecordingProxy(second) as second_proxy,
        RecordingProxy(private[0].split("/")[0]) as first_proxy,
    ):
        data, base = one_file_kit(directory / "base", MiB + 3, seed=29)
        push(second, "csi/base", "v1", base, auth=RegistryAuth(*BOB))
        write(directory / "tuned" / "lora.bin", b"lora")
        kitfile = {
            "manifestVersion": "1.0.0",
            "model": {
                "path": f"{second_proxy.address}/csi/base:v1",
                "parts": [{"path": "lora.bin"}],
            },
        }
        tuned = build_modelkit(directory / "tuned", kitfile)
        push(first_proxy.upstream, "csi/tuned", "v1", tuned, auth=RegistryAuth("ada", PASSWORD))
        yield first_proxy, second_proxy, data


def test_each_registry_gets_its_own_credential_and_no_other(
    plugin: Plugin, pods: list[Pod], two_registries
) -> None:
    first, second, data = two_registries
    reference = f"{first.address}/csi/tuned:v1"
    ada, bob = f"ada:{PASSWORD}", ":".join(BOB)
    both = Pod(
        plugin.base,
        "both",
        {"reference": reference},
        **docker_secret({first.address: ada, second.address: bob}),
    )
    pods.append(both)
    plugin.node.NodePublishVolume(both.publish_request(), timeout=120)
    assert (both.target / "weights.bin").read_bytes() == data  # from the second registry
    assert (both.target / "lora.bin").read_bytes() == b"lora"
    assert (first.logins(), second.logins()) == ({ada}, {bob})
    first.reset()
    second.reset()
    # No entry for the second registry: it is asked without credentials, never with ada's.
    only_first = Pod(
        plugin.base, "first-only", {"reference": reference}, **docker_secret({first.address: ada})
    )
    pods.append(only_first)
    code, details = error_of(plugin.node.NodePublishVolume, only_first.publish_request())
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert details.startswith(f"{reference}: registry {second.address} requires login"), details
    assert first.logins() == {ada}
    assert second.authorizations and second.logins() == set()


@pytest.fixture(scope="module")
def public(
    tmp_path_factory: pytest.TempPathFactory, registry: str, proxy: CountingProxy
) -> tuple[str, bytes]:
    """A kit anyone may read, as pods name it: (reference, its one file's bytes)."""
    data, kit = one_file_kit(tmp_path_factory.mktemp("public"), MiB, seed=31)
    push(registry, "csi/public", "v1", kit)
    return f"{proxy.address}/csi/public:v1", data


def test_a_stopped_node_service_never_wedges_the_plugin(
    plugin: Plugin, pods: list[Pod], public: tuple[str, bytes]
) -> None:
    reference, data = public
    before = Pod(plugin.base, "before-stop", {"reference": reference})
    pods.append(before)
    plugin.node.NodePublishVolume(before.publish_request(), timeout=120)
    during = [Pod(plugin.base, f"during-stop-{n}", {"reference": reference}) for n in range(9)]
    pods += during
    service = node_service_pid(plugin)
    os.kill(service, signal.SIGSTOP)
    try:
        assert not plugin.identity.Probe(messages.ProbeRequest(), timeout=60).ready.value
        with futures.ThreadPoolExecutor(len(during)) as pool:  # more than the plugin's workers
            failures = list(
                pool.map(
                    lambda pod: error_of(plugin.node.NodePublishVolume, pod.publish_request()),
                    during,
                )
            )
        root = plugin.state / "kits"
        for code, details in failures:  # the plugin's answer, long before the caller's deadline
            assert code == grpc.StatusCode.UNAVAILABLE, details
            assert details.startswith(f"the node service at {root}: "), details
            assert details.endswith(
                "see whether its process is stopped, and its log "
                f"{plugin.state / 'node-service.log'}"
            ), details
        assert plugin.node.NodeGetInfo(messages.NodeGetInfoRequest(), timeout=60).node_id == NODE
        assert not plugin.identity.Probe(messages.ProbeRequest(), timeout=60).ready.value
        plugin.node.NodeUnpublishVolume(before.unpublish_request(), timeout=60)
        assert not os.path.lexists(before.target)
    finally:
        os.kill(service, signal.SIGCONT)
    wait_for(
        lambda: plugin.identity.Probe(messages.ProbeRequest(), timeout=60).ready.value,
        "the node service to answer again",
    )
    assert not any(mounted(pod.target) for pod in during)  # nothing landed late
    plugin.node.NodePublishVolume(during[0].publish_request(), timeout=120)
    assert (during[0].target / "weights.bin").read_bytes() == data


def test_no_volume_reaches_the_nodes_kit_storage(
    tmp_path: Path, registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's kit storage holds ``secret:v1``: a volume naming it, shared or with a mount
    of its own, and a pushed kit whose ``model.path`` names it, all get nothing of it."""
    home = tmp_path / "kitops"
    write(tmp_path / "secret/secret.bin", b"the node's own\n")
    secret = build_modelkit(
        tmp_path / "secret", {"manifestVersion": "1.0.0", "model": {"path": "secret.bin"}}
    )
    store_locally(home, "localhost", "secret", "v1", secret)
    write(tmp_path / "hostile/README.md", b"# hi\n")
    hostile = build_modelkit(
        tmp_path / "hostile",
        {
            "manifestVersion": "1.0.0",
            "model": {"path": "secret:v1"},
            "docs": [{"path": "README.md"}],
        },
    )
    push(registry, "csi/hostile", "v1", hostile)
    monkeypatch.setenv("KITOPS_HOME", str(home))  # the plugin and its node service see it
    (tmp_path / "node").mkdir()
    with running_plugin(tmp_path / "node") as plugin, pods_of(plugin) as pods:
        for name, attributes, code in [
            ("shared", {"reference": "secret:v1"}, grpc.StatusCode.PERMISSION_DENIED),
            (
                "own",
                {"reference": "secret:v1", "filter": "model"},
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            (
                "hostile",
                {"reference": f"{registry}/csi/hostile:v1"},
                grpc.StatusCode.PERMISSION_DENIED,
            ),
        ]:
            pod = Pod(tmp_path / "node", name, attributes)
            pods.append(pod)
            refused, details = error_of(plugin.node.NodePublishVolume, pod.publish_request())
            assert refused == code, (refused, details)
            assert not mounted(pod.target)
        assert (
            "its model.path 'secret:v1' names kit's local storage"
            in plugin.log + (tmp_path / "node/state/node-service.log").read_text()
        )
