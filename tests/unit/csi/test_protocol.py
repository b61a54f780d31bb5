"""The generated CSI protocol speaks the spec's wire format: packages, services and field
numbers as kubelet's generated code has them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from modelkitfs.csi.protocol import messages, services

ROOT = Path(__file__).resolve().parents[3]


def test_services_are_csi_v1() -> None:
    names = {s.full_name for s in messages.DESCRIPTOR.services_by_name.values()}
    assert names == {"csi.v1.Identity", "csi.v1.Node"}
    node = messages.DESCRIPTOR.services_by_name["Node"]
    assert {m.name for m in node.methods} == {
        "NodePublishVolume",
        "NodeUnpublishVolume",
        "NodeGetCapabilities",
        "NodeGetInfo",
    }
    assert hasattr(services, "add_NodeServicer_to_server")


@pytest.mark.parametrize(
    ("message", "numbers"),
    [
        (
            "NodePublishVolumeRequest",
            {
                "volume_id": 1,
                "publish_context": 2,
                "staging_target_path": 3,
                "target_path": 4,
                "volume_capability": 5,
                "readonly": 6,
                "secrets": 7,
                "volume_context": 8,
            },
        ),
        ("NodeUnpublishVolumeRequest", {"volume_id": 1, "target_path": 2}),
        (
            "NodeGetInfoResponse",
            {"node_id": 1, "max_volumes_per_node": 2, "accessible_topology": 3},
        ),
        ("GetPluginInfoResponse", {"name": 1, "vendor_version": 2, "manifest": 3}),
        ("GetPluginCapabilitiesResponse", {"capabilities": 1}),
        ("ProbeResponse", {"ready": 1}),
        ("VolumeCapability", {"block": 1, "mount": 2, "access_mode": 3}),
    ],
)
def test_field_numbers_are_the_spec_s(message: str, numbers: dict[str, int]) -> None:
    fields = getattr(messages, message).DESCRIPTOR.fields_by_name
    assert {name: field.number for name, field in fields.items()} == numbers


def test_a_request_from_kubelet_s_bytes() -> None:
    """Bytes as another implementation encodes them: field 4 (target_path), field 8 (a map
    entry: key 1, value 2)."""
    target = b"/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/kit/mount"
    entry = b"\x0a\x09reference\x12\x0br.example/x"
    wire = b"\x22" + bytes([len(target)]) + target + b"\x42" + bytes([len(entry)]) + entry
    request = messages.NodePublishVolumeRequest.FromString(wire)
    assert request.target_path == target.decode()
    assert dict(request.volume_context) == {"reference": "r.example/x"}


def test_secrets_are_marked_as_such() -> None:
    field = messages.NodePublishVolumeRequest.DESCRIPTOR.fields_by_name["secrets"]
    assert "csi_secret" in str(field.GetOptions())


def test_the_generated_modules_are_those_of_csi_proto(tmp_path: Path) -> None:
    """scripts/generate-csi run again writes what is committed: the .proto is the source."""
    generated = subprocess.run(
        [str(ROOT / "scripts" / "generate-csi"), str(tmp_path)], capture_output=True, text=True
    )
    assert generated.returncode == 0, generated.stderr
    names = sorted(p.name for p in (tmp_path / "modelkitfs" / "csi").iterdir())
    assert names == ["csi_pb2.py", "csi_pb2.pyi", "csi_pb2_grpc.py", "csi_pb2_grpc.pyi"]
    for name in names:
        fresh = (tmp_path / "modelkitfs" / "csi" / name).read_text()
        assert fresh == (ROOT / "modelkitfs" / "csi" / name).read_text(), name
