"""The unpack plan: which layer lands where, in kit's order (by digest for kit 0.5 and later, by
position for older kits), and the ModelPack Kitfile kit derives. Manifests and Kitfiles from a
hostile registry, fuzzed: each is either understood or refused with a
:class:`~modelkitfs.errors.ModelKitFSError` (one clear line), never anything else."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelkitfs.errors import ModelKitFSError, NotAModelKit
from modelkitfs.kit.filters import parse_filters
from modelkitfs.kit.kitfile import render_kitfile
from modelkitfs.kit.manifest import (
    MODELKIT_CONFIG,
    MODELPACK_CONFIG,
    ModelKitManifest,
    parse_manifest,
)
from modelkitfs.kit.plan import kitfile_for_modelpack, plan_layers

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


def manifest_with(layers: list[dict[str, Any]], modelpack: bool = False) -> bytes:
    config = {
        "mediaType": MODELPACK_CONFIG if modelpack else MODELKIT_CONFIG,
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


def digest(n: int) -> str:
    return "sha256:" + f"{n:02x}" * 32


def kit_manifest(*layers: tuple[str, int], modelpack: bool = False, **paths: str) -> Any:
    """A manifest whose layers have these (kind, digest number); ``paths``: filepath
    annotations (ModelPack), by digest number as ``l<n>``."""
    kind_type = (
        "application/vnd.cncf.model.{}.v1.tar"
        if modelpack
        else ("application/vnd.kitops.modelkit.{}.v1.tar")
    )
    descriptors = []
    for kind, n in layers:
        descriptor: dict[str, Any] = {
            "mediaType": kind_type.format(kind),
            "digest": digest(n),
            "size": n,
        }
        if f"l{n}" in paths:
            descriptor["annotations"] = {"org.cncf.model.filepath": paths[f"l{n}"]}
        descriptors.append(descriptor)
    manifest = parse_manifest(manifest_with(descriptors, modelpack), MANIFEST, "kit")
    assert isinstance(manifest, ModelKitManifest)
    return manifest


def planned(manifest: ModelKitManifest, kitfile: dict[str, Any], *filters: str) -> list:
    return [
        (p.entry.section, p.entry.path, p.layer.digest, p.prefix)
        for p in plan_layers(manifest, kitfile, parse_filters(filters))
    ]


def test_by_digest_entries_unpack_in_kit_order_at_their_own_paths() -> None:
    manifest = kit_manifest(("docs", 4), ("code", 3), ("dataset", 2), ("model", 1))
    kitfile = {
        "docs": [{"path": "README.md", "digest": digest(4)}],
        "code": [{"path": "src", "digest": digest(3)}],
        "datasets": [{"name": "train", "path": "data/train.csv", "digest": digest(2)}],
        "model": {"name": "m", "path": "model/weights.bin", "digest": digest(1)},
    }
    assert planned(manifest, kitfile) == [
        ("model", "model/weights.bin", digest(1), ""),
        ("datasets", "data/train.csv", digest(2), ""),
        ("code", "src", digest(3), ""),
        ("docs", "README.md", digest(4), ""),
    ]
    assert planned(manifest, kitfile, "datasets") == [("datasets", "data/train.csv", digest(2), "")]


def test_two_entries_with_one_digest_take_its_layers_in_turn() -> None:
    manifest = kit_manifest(("code", 3), ("code", 3))
    kitfile = {"code": [{"path": "a", "digest": digest(3)}, {"path": "b", "digest": digest(3)}]}
    layers = plan_layers(manifest, kitfile, [])
    assert [p.entry.path for p in layers] == ["a", "b"]
    assert layers[0].layer is manifest.layers[0] and layers[1].layer is manifest.layers[1]


def test_a_digest_the_manifest_lacks_is_named() -> None:
    kitfile = {"code": [{"path": "src", "digest": digest(9)}]}
    with pytest.raises(NotAModelKit, match=f"code entry 'src' names layer {digest(9)}"):
        plan_layers(kit_manifest(("code", 3)), kitfile, [])


def test_digests_for_some_entries_only_are_refused() -> None:
    kitfile = {"code": [{"path": "a", "digest": digest(3)}, {"path": "b"}]}
    with pytest.raises(NotAModelKit, match="digests for some entries but not all"):
        plan_layers(kit_manifest(("code", 3), ("code", 4)), kitfile, [])


def test_legacy_layers_pair_by_position_under_their_entry_s_parent() -> None:
    manifest = kit_manifest(("model", 1), ("code", 3), ("model", 2), ("docs", 4))
    kitfile = {
        "model": {"path": "models/m.bin", "parts": [{"path": "models/part/p.bin"}]},
        "code": [{"path": "src/lib"}],
        "docs": [{"path": "README.md"}, {"path": "unpaired"}],
    }
    # Manifest order; the second model layer is the first part; a layer without an entry
    # would be skipped, an entry without a layer has nothing to unpack.
    assert planned(manifest, kitfile) == [
        ("model", "models/m.bin", digest(1), "models"),
        ("code", "src/lib", digest(3), "src"),
        ("parts", "models/part/p.bin", digest(2), "models/part"),
        ("docs", "README.md", digest(4), ""),
    ]


def test_a_modelpack_kitfile_is_derived_from_its_layers() -> None:
    manifest = kit_manifest(
        ("weight", 1), ("weight", 2), ("code", 3), modelpack=True, l1="w1.bin", l2="w2.bin", l3="x"
    )
    kitfile = kitfile_for_modelpack(manifest, [])
    assert kitfile["model"]["path"] == "w1.bin" and kitfile["model"]["digest"] == digest(1)
    assert [p["path"] for p in kitfile["model"]["parts"]] == ["w2.bin"]
    assert [c["path"] for c in kitfile["code"]] == ["x"]
    with pytest.raises(NotAModelKit, match="number of layers does not match diffIds"):
        kitfile_for_modelpack(manifest, [digest(7)])


def test_a_modelpack_layer_without_a_filepath_is_refused() -> None:
    manifest = kit_manifest(("weight", 1), modelpack=True)
    with pytest.raises(NotAModelKit, match=r"no org\.cncf\.model\.filepath annotation"):
        kitfile_for_modelpack(manifest, [])
