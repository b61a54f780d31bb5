"""Layer media types of kit and ModelPack, and what is not a ModelKit."""

from __future__ import annotations

import json

import pytest

from modelkitfs.errors import NotAModelKit
from modelkitfs.kit.manifest import Descriptor, ModelKitIndex, parse_layer_type, parse_manifest


def layer(media_type: str, modelpack: bool = False, **annotations: str):
    return parse_layer_type(Descriptor(media_type, "sha256:" + "a" * 64, 1, annotations), modelpack)


@pytest.mark.parametrize(
    ("media_type", "modelpack", "expected"),
    [
        ("application/vnd.kitops.modelkit.model.v1.tar", False, ("model", "tar", "")),
        ("application/vnd.kitops.modelkit.dataset.v1.tar+gzip", False, ("dataset", "tar", "gzip")),
        ("application/vnd.kitops.modelkit.code.v1.raw+zstd", False, ("code", "raw", "zstd")),
        ("application/vnd.kitops.modelkit.mcpb.v1.raw", False, ("mcpb", "raw", "")),
        ("application/vnd.cncf.model.weight.v1.tar+zstd", True, ("model", "tar", "zstd")),
        ("application/vnd.cncf.model.weight.config.v1.raw", True, ("modelpart", "raw", "")),
        ("application/vnd.cncf.model.doc.v1.tar", True, ("docs", "tar", "")),
    ],
)
def test_layer_types(media_type: str, modelpack: bool, expected: tuple[str, str, str]) -> None:
    parsed = layer(media_type, modelpack)
    assert (parsed.base, parsed.format, parsed.compression) == expected


def test_prompt_layers_are_code_with_a_subtype() -> None:
    media_type = "application/vnd.kitops.modelkit.code.v1.tar"
    assert layer(media_type, **{"ml.kitops.modelkit.layer-subtype": "prompt"}).base == "prompt"


@pytest.mark.parametrize(
    ("media_type", "modelpack"),
    [
        (
            "application/vnd.cncf.model.weight.v1.raw+gzip",
            True,
        ),  # ModelPack: raw is never compressed
        ("application/vnd.kitops.modelkit.model.v1.tar+bzip2", False),
        ("application/vnd.kitops.modelkit.weights.v1.tar", False),
        ("application/vnd.oci.image.layer.v1.tar+gzip", False),
    ],
)
def test_unknown_layer_types(media_type: str, modelpack: bool) -> None:
    with pytest.raises(NotAModelKit, match="not a"):
        layer(media_type, modelpack)


def test_container_image_is_named() -> None:
    manifest = {
        "schemaVersion": 2,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "b" * 64,
            "size": 2,
        },
        "layers": [],
    }
    with pytest.raises(NotAModelKit, match="is a container image, not a ModelKit"):
        parse_manifest(json.dumps(manifest).encode(), "", "r.io/app:1")


def test_index_labels_keep_non_string_values_as_json() -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "artifactType": "application/vnd.kitops.modelkit.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "c" * 64,
                "size": 10,
                "modelMetadata": {"quantization": "q4_0", "arch": ["sm_80", "sm_90"]},
            }
        ],
    }
    parsed = parse_manifest(json.dumps(index).encode(), "", "r.io/m:all")
    assert isinstance(parsed, ModelKitIndex)
    assert parsed.entries[0].labels == {"quantization": "q4_0", "arch": '["sm_80","sm_90"]'}
