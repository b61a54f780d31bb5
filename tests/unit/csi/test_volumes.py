"""Publish and unpublish decisions that need no mount: conflicts, codes, which volumes share
the node service, why a kit could not be shown (the registry's answer stubbed), and what a
publish that outlives its deadline leaves (binds and the node service's answers stubbed)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelkitfs.csi import node_service as node_service_module
from modelkitfs.csi import volumes as volumes_module
from modelkitfs.csi.binds import Target
from modelkitfs.csi.node_service import NodeService
from modelkitfs.csi.records import OWN, Record, Records
from modelkitfs.csi.volume_spec import VolumeSpec, parse_volume
from modelkitfs.csi.volumes import VolumeError, Volumes, code_of
from modelkitfs.errors import (
    AuthenticationError,
    GaveUp,
    InvalidFilter,
    ModelKitFSError,
    MountError,
    NotFound,
    TransientError,
    Unreachable,
)
from modelkitfs.mount import DaemonError
from modelkitfs.session.options import MountOptions
from tests.support.waiting import wait_for

REF = "registry.example:5000/team/llm:v1"


class StoppedService(NodeService):
    """Someone else's node service, not running."""

    def alive(self) -> bool:
        return False


class RunningService(NodeService):
    """A node service whose root is a plain folder: kits are whatever folders are there."""

    def ensure(self) -> None:
        pass


@pytest.fixture
def volumes(tmp_path: Path) -> Volumes:
    service = RunningService(str(tmp_path / "kits"), None, None)
    os.makedirs(service.root)
    return Volumes(Records(tmp_path / "state"), service, MountOptions(plain_http=True))


def error(volumes: Volumes, *args: object) -> VolumeError:
    with pytest.raises(VolumeError) as raised:
        volumes.publish(*args)  # type: ignore[arg-type]
    return raised.value


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (InvalidFilter("x"), "INVALID_ARGUMENT"),
        (NotFound("x"), "NOT_FOUND"),
        (AuthenticationError("x"), "PERMISSION_DENIED"),
        (Unreachable("x"), "UNAVAILABLE"),
        (GaveUp("x", TransientError("y")), "UNAVAILABLE"),
        (MountError("x"), "INTERNAL"),
        (VolumeError("ALREADY_EXISTS", "x"), "ALREADY_EXISTS"),
        # A mount daemon's error, by the kind it reported: a kit its model.path names missing.
        (DaemonError("x", "NotFound"), "NOT_FOUND"),
        (DaemonError("x", "NotAllowed"), "PERMISSION_DENIED"),
        (DaemonError("x", "SignatureRefused"), "PERMISSION_DENIED"),  # README, Signed kits
        (DaemonError("x", "GaveUp"), "UNAVAILABLE"),
        (DaemonError("x", ""), "INTERNAL"),
        (DaemonError("x", "Path"), "INTERNAL"),  # no error of ours
    ],
)
def test_each_failure_has_the_spec_s_code(failure: ModelKitFSError, code: str) -> None:
    assert code_of(failure) == code


@pytest.mark.parametrize(
    ("context", "shares"),
    [
        ({"reference": REF}, True),
        ({"reference": REF, "plainHTTP": "true", "timeout": "60"}, True),  # the plugin's own
        ({"reference": REF, "plainHTTP": "false"}, False),
        ({"reference": REF, "timeout": "5"}, False),
        ({"reference": REF, "filter": "model"}, False),
        ({"reference": REF, "label": "a=b"}, False),
    ],
)
def test_what_shares_the_node_service(
    volumes: Volumes, context: dict[str, str], shares: bool
) -> None:
    spec, _, _ = parse_volume(context, {})
    assert volumes._shares(spec) is shares


def test_credentials_of_its_own_never_share(volumes: Volumes) -> None:
    spec, _, _ = parse_volume({"reference": REF}, {"username": "u", "password": "p"})
    assert not volumes._shares(spec)


def test_a_conflicting_publish_is_already_exists(volumes: Volumes, tmp_path: Path) -> None:
    target = str(tmp_path / "pod" / "mount")
    spec = VolumeSpec(REF).as_dict()
    volumes.records.put(Record("csi-1", target, spec, OWN))
    found = error(volumes, "csi-1", target, {"reference": REF, "filter": "model"}, {})
    assert found.code == "ALREADY_EXISTS"
    assert str(found) == (
        f"{target} is published as volume csi-1 of {REF}, with other attributes: unpublish it first"
    )
    assert error(volumes, "csi-2", target, {"reference": REF}, {}).code == "ALREADY_EXISTS"


def test_a_missing_kit_is_not_found_with_the_registry_s_reason(
    volumes: Volumes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = []

    def probe(registry: str, repository: str, identifier: str, *rest: object) -> Exception:
        asked.append((registry, repository, identifier))
        return NotFound("manifest v1 of team/llm does not exist")

    monkeypatch.setattr(volumes_module, "_probe", probe)
    target = str(tmp_path / "pod" / "mount")
    found = error(volumes, "csi-1", target, {"reference": REF}, {})
    assert (found.code, str(found)) == (
        "NOT_FOUND",
        f"{REF}: manifest v1 of team/llm does not exist",
    )
    assert asked == [("registry.example:5000", "team/llm", "v1")]
    assert volumes.records.get(target) is None  # nothing recorded for a failed publish


def test_without_the_registry_s_reason_the_service_s_answer_counts(
    volumes: Volumes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(volumes_module, "_probe", lambda *args: None)
    found = error(volumes, "csi-1", str(tmp_path / "t"), {"reference": REF}, {})
    assert (found.code, str(found)) == (
        "NOT_FOUND",
        f"the node service cannot show {REF}: No such file or directory",
    )


def test_a_refused_anonymous_pull_asks_for_a_secret(
    volumes: Volumes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(volumes_module, "_probe", lambda *a: AuthenticationError("requires login"))
    found = error(volumes, "csi-1", str(tmp_path / "t"), {"reference": REF}, {})
    assert found.code == "PERMISSION_DENIED"
    assert str(found) == (
        f"{REF}: registry registry.example:5000 requires login: give the volume a "
        "nodePublishSecretRef with 'username' and 'password' (or a .dockerconfigjson)"
    )


def test_a_folder_outside_the_root_is_never_bound(volumes: Volumes, tmp_path: Path) -> None:
    folder = Path(volumes.service.root) / "registry.example:5000" / "team"
    folder.mkdir(parents=True)
    (folder / "llm:v1").symlink_to(tmp_path / "state")
    found = error(volumes, "csi-1", str(tmp_path / "t"), {"reference": REF}, {})
    assert found.code == "INVALID_ARGUMENT"
    assert str(found).startswith(f"{REF} names no kit folder under ")


def test_a_stopped_node_service_is_unavailable(tmp_path: Path) -> None:
    service = StoppedService(str(tmp_path / "kits"), None, None)
    volumes = Volumes(Records(tmp_path / "state"), service, MountOptions())
    found = error(volumes, "csi-1", str(tmp_path / "t"), {"reference": REF}, {})
    assert found.code == "UNAVAILABLE"
    assert str(found) == (
        f"the node service at {service.root} is not running: start 'modelkitfs serve "
        f"{service.root}' (the DaemonSet's node-service container)"
    )


@pytest.mark.parametrize(("volume_id", "target"), [("", "/t"), ("csi-1", ""), ("csi-1", "t")])
def test_a_request_needs_a_volume_and_an_absolute_target(
    volumes: Volumes, volume_id: str, target: str
) -> None:
    assert error(volumes, volume_id, target, {"reference": REF}, {}).code == "INVALID_ARGUMENT"


def test_unpublish_of_what_is_not_published_succeeds(volumes: Volumes, tmp_path: Path) -> None:
    target = tmp_path / "pod" / "mount"
    volumes.unpublish("csi-1", str(target))  # no folder
    target.mkdir(parents=True)
    volumes.records.put(Record("csi-1", str(target), {}, OWN))
    volumes.unpublish("csi-1", str(target))  # a folder and a record, nothing mounted
    assert not target.exists() and volumes.records.all() == []


def test_unpublish_of_another_volume_s_target_is_not_found(
    volumes: Volumes, tmp_path: Path
) -> None:
    volumes.records.put(Record("csi-1", str(tmp_path), {}, OWN))
    with pytest.raises(VolumeError) as raised:
        volumes.unpublish("csi-2", str(tmp_path))
    assert raised.value.code == "NOT_FOUND"
    assert volumes.records.get(str(tmp_path)) is not None


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """What stuck calls wait for; set at the end whatever happens."""
    event = threading.Event()
    yield event
    event.set()


def test_a_publish_past_its_deadline_undoes_its_mount_when_it_ends(
    volumes: Volumes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: threading.Event
) -> None:
    (Path(volumes.service.root) / "registry.example:5000/team/llm:v1").mkdir(parents=True)
    mounted: list[str] = []

    def slow_bind(source: str, target: str) -> None:
        release.wait()  # a node service that answers late
        mounted.append(target)

    monkeypatch.setattr(volumes_module, "bind_read_only", slow_bind)
    monkeypatch.setattr(volumes_module, "unmount", lambda target: mounted.remove(target))
    target = str(tmp_path / "pod" / "mount")
    found = error(volumes, "csi-1", target, {"reference": REF}, {}, 0.01)
    assert found.code == "DEADLINE_EXCEEDED"
    assert str(found) == (
        f"publishing {REF} at {target}: no answer within 0.01 s: what it mounts later is "
        "undone; try again"
    )
    # Under way still: its thread records the volume, then waits in the bind.
    wait_for(lambda: volumes.records.get(target) is not None, "the publish to be recorded")
    release.set()
    wait_for(lambda: volumes.records.get(target) is None, "the late publish to be undone")
    assert mounted == [] and not os.path.exists(target)


def test_a_node_service_that_does_not_answer_fails_publishes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: threading.Event
) -> None:
    monkeypatch.setattr(node_service_module, "ANSWER_TIMEOUT", 0.01)
    monkeypatch.setattr(node_service_module, "_ask", lambda root: release.wait() and Target.MOUNTED)
    service = NodeService(str(tmp_path / "kits"), None, None)
    volumes = Volumes(Records(tmp_path / "state"), service, MountOptions())
    for expected in ("no answer within 0.01 s", "still no answer"):  # the second waits not
        found = error(volumes, "csi-1", str(tmp_path / "t"), {"reference": REF}, {})
        assert found.code == "UNAVAILABLE"
        assert str(found) == (
            f"the node service at {service.root}: {expected}: see whether its process is "
            "stopped, and its container's log"
        )
    assert not service.alive()  # Probe: not ready
    assert volumes.records.all() == []
    release.set()
    wait_for(service.alive, "the node service to answer again")


def test_a_volume_s_signers_are_added_to_the_node_s_policy_never_replace_it(
    tmp_path: Path,
) -> None:
    from modelkitfs.csi.volume_spec import InvalidVolume
    from tests.support import cosign

    node_key, pod_key = cosign.new_key(), cosign.new_key()
    node_pub = cosign.write_public(node_key, tmp_path / "node.pub")
    policy = tmp_path / "policy.yaml"
    policy.write_text("images: [{glob: '**'}]\nauthorities: [{key: {path: node.pub}}]\n")
    service = RunningService(str(tmp_path / "kits"), None, None)
    node = MountOptions(policy=str(policy), insecure_ignore_tlog=True)
    volumes = Volumes(Records(tmp_path / "state"), service, node)
    context = {"reference": REF, "verifyKey": cosign.public_pem(pod_key).decode()}
    spec, _, _ = parse_volume(context, {})
    assert not volumes._shares(spec)  # checked by a mount of its own
    combined = volumes._volume_options(spec).signature_policy()
    assert combined is not None
    assert [rule.origin.split(",")[0] for rule in combined.rules] == [
        "the command line",
        f"--policy {policy}",
    ]  # both must pass

    flagged = Volumes(
        Records(tmp_path / "state2"),
        service,
        MountOptions(verify_keys=[str(node_pub)], insecure_ignore_tlog=True),
    )
    with pytest.raises(InvalidVolume, match="this node names its signers by flags"):
        flagged._volume_options(spec)
