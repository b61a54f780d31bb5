"""Manifests and Kitfiles from a hostile registry, fuzzed: each is either understood or refused
with a :class:`~modelkitfs.errors.ModelKitFSError` (one clear line), never anything else."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelkitfs.errors import ModelKitFSError
from modelkitfs.kit.kitfile import render_kitfile
from modelkitfs.kit.manifest import ModelKitManifest, parse_manifest
from modelkitfs.kit.plan import plan_layers

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIGEST = "sha256:" + "ab" * 32
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SECTIONS = ("package", "model", "datasets", "code", "docs", "prompts", "mcpServers", "parts")
FIELDS = ("name", "path", "digest", "diffId", "description", "license", "parts", "parameters")

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
documents = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=20,
)
kitfiles = st.dictionaries(
    st.sampled_from(SECTIONS) | st.just("manifestVersion"), documents, max_size=6
)


def manifest_with(layers: list[dict[str, Any]]) -> bytes:
    config = {
        "mediaType": "application/vnd.kitops.modelkit.config.v1+json",
        "digest": DIGEST,
        "size": 10,
    }
    return json.dumps(
        {"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers}
    ).encode()


KIT_MANIFEST = parse_manifest(
    manifest_with(
        [
            {
                "mediaType": f"application/vnd.kitops.modelkit.{kind}.v1.tar",
                "digest": DIGEST,
                "size": 1,
            }
            for kind in ("model", "dataset", "code", "docs")
        ]
    ),
    MANIFEST,
    "fuzz",
)
assert isinstance(KIT_MANIFEST, ModelKitManifest)


@FUZZ
@given(kitfiles)
def test_fuzz_kitfiles_are_planned_or_refused(kitfile: dict[str, Any]) -> None:
    try:
        plan_layers(KIT_MANIFEST, kitfile, [])
        render_kitfile(kitfile)
    except ModelKitFSError:
        pass


@FUZZ
@given(st.binary(max_size=300) | documents.map(lambda d: json.dumps(d).encode()))
def test_fuzz_manifests_are_parsed_or_refused(raw: bytes) -> None:
    with contextlib.suppress(ModelKitFSError):
        parse_manifest(raw, MANIFEST, "fuzz")


@FUZZ
@given(
    st.lists(
        st.dictionaries(st.sampled_from(["mediaType", "digest", "size", "annotations"]), documents),
        max_size=4,
    )
)
def test_fuzz_layer_descriptors_are_parsed_or_refused(layers: list[dict[str, Any]]) -> None:
    with contextlib.suppress(ModelKitFSError):
        parse_manifest(manifest_with(layers), MANIFEST, "fuzz")


@pytest.mark.parametrize(
    ("layer", "named"),
    [
        ({"digest": DIGEST, "size": False, "mediaType": None}, '"size"'),  # found by hypothesis
        ({"digest": "", "size": 1}, '"digest"'),
        ({"digest": "sha256:../../../etc/passwd", "size": 1}, '"digest"'),  # URLs, cache paths
        ({"digest": "sha256:" + "a" * 64, "size": 1, "mediaType": None}, '"mediaType"'),
        ({"digest": "sha256:" + "a" * 64, "size": "12"}, '"size"'),
        ({"digest": 7, "size": 1}, '"digest"'),
        ({"digest": "sha256:" + "a" * 64, "size": 1, "annotations": {"k": 1}}, '"annotations"'),
    ],
)
def test_descriptor_fields_of_the_wrong_type_are_named(layer: dict[str, Any], named: str) -> None:
    with pytest.raises(ModelKitFSError, match=f"malformed descriptor: {named}"):
        parse_manifest(manifest_with([layer]), MANIFEST, "kit")
