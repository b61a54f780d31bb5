"""Recognise a ModelKit manifest and describe its layers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from modelkitfs.errors import NotAModelKit
from modelkitfs.primitives.digests import is_digest

MODELKIT_ARTIFACT_TYPE = "application/vnd.kitops.modelkit.manifest.v1+json"
MODELKIT_CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
MODELKIT_INDEX_TYPE = "application/vnd.kitops.modelkit.index.v1+json"
MODELPACK_ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
SUBTYPE_ANNOTATION = "ml.kitops.modelkit.layer-subtype"
FILEPATH_ANNOTATION = "org.cncf.model.filepath"
FILE_METADATA_ANNOTATION = "org.cncf.model.file.metadata+json"
KITFILE_ANNOTATION = "ml.kitops.modelkit.kitfile"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_CONFIGS = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}

# application/vnd.kitops.modelkit.<base>.v1.<tar|raw>[+<gzip|zstd>]
_KIT_LAYER = re.compile(r"application/vnd\.kitops\.modelkit\.(\w+)\.v1\.(\w+)(?:\+(\w+))?")
# application/vnd.cncf.model.<base>.v1.<tar|raw>[+<gzip|zstd>]
_MODELPACK_LAYER = re.compile(
    r"application/vnd\.cncf\.model\.(\w+(?:\.\w+)?)\.v1\.(\w+)(?:\+(\w+))?"
)
_KIT_BASES = {"model", "modelpart", "dataset", "code", "docs", "mcpb"}
# ModelPack's layer kinds as the Kitfile entries kit derives from them.
_MODELPACK_BASES = {
    "weight": "model",
    "weight.config": "modelpart",
    "dataset": "dataset",
    "code": "code",
    "doc": "docs",
}
_COMPRESSIONS = {None: "", "gzip": "gzip", "zstd": "zstd"}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any, what: str) -> Descriptor:
        """A descriptor with the JSON types the OCI spec gives (Go's decoder refuses others)."""
        if not isinstance(raw, dict):
            raise NotAModelKit(f"{what} has a malformed descriptor: not a JSON object")
        digest, size = raw.get("digest"), raw.get("size")
        media_type = raw.get("mediaType", "")
        annotations = raw.get("annotations") or {}
        if not isinstance(digest, str):
            problem = '"digest" is missing or not a string'
        elif not is_digest(digest):  # it becomes part of URLs and cache paths
            problem = f'"digest" {digest[:80]!r} is not a digest (algorithm:encoded)'
        elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
            problem = '"size" is missing or not a non-negative integer'
        elif not isinstance(media_type, str):
            problem = '"mediaType" is not a string'
        elif not isinstance(annotations, dict) or not all(
            isinstance(value, str) for value in annotations.values()
        ):
            problem = '"annotations" is not an object of strings'
        else:
            return cls(media_type, digest, size, dict(annotations))
        raise NotAModelKit(f"{what} has a malformed descriptor: {problem}")


@dataclass(frozen=True)
class Layer:
    """A ModelKit layer: which kind of Kitfile entry it holds, and how it is encoded."""

    descriptor: Descriptor
    base: str  # model, modelpart, dataset, code, docs, prompt, mcpb
    format: str  # tar or raw
    compression: str  # "" (none), gzip, zstd

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def filepath(self) -> str | None:
        return self.descriptor.annotations.get(FILEPATH_ANNOTATION)


@dataclass(frozen=True)
class ModelKitManifest:
    """A ModelKit's manifest; ``modelpack`` when it follows the CNCF ModelPack spec."""

    config: Descriptor
    layers: list[Layer]
    annotations: dict[str, str]
    modelpack: bool = False


@dataclass(frozen=True)
class IndexEntry:
    digest: str
    labels: dict[str, str]
    tag: str | None


@dataclass(frozen=True)
class ModelKitIndex:
    """A ModelKit index (``kit index``): ModelKits of one repository told apart by labels."""

    entries: list[IndexEntry]


def parse_layer_type(descriptor: Descriptor, modelpack: bool) -> Layer:
    """Split a kit or ModelPack layer media type into base type, format and compression."""
    media_type = descriptor.media_type
    match = (_MODELPACK_LAYER if modelpack else _KIT_LAYER).fullmatch(media_type)
    bases = _MODELPACK_BASES if modelpack else {b: b for b in _KIT_BASES}
    if (
        match is None
        or match[1] not in bases
        or match[2] not in ("tar", "raw")
        or match[3] not in _COMPRESSIONS
        or (modelpack and match[2] == "raw" and match[3])
    ):
        raise NotAModelKit(
            f"layer {descriptor.digest} has media type {media_type!r}, which is not a "
            f"{'ModelPack' if modelpack else 'ModelKit'} layer type"
        )
    base = bases[match[1]]
    if (
        not modelpack
        and base == "code"
        and descriptor.annotations.get(SUBTYPE_ANNOTATION) == "prompt"
    ):
        base = "prompt"
    return Layer(descriptor, base, match[2], _COMPRESSIONS[match[3]])


def parse_manifest(raw: bytes, media_type: str, reference: str) -> ModelKitManifest | ModelKitIndex:
    """Parse ``raw`` as a ModelKit manifest or index, or say clearly what else it is."""
    try:
        document = json.loads(raw)
    except ValueError:
        raise NotAModelKit(f"{reference}: the registry sent a manifest that is not JSON") from None
    if not isinstance(document, dict):
        raise NotAModelKit(f"{reference}: the manifest is not a JSON object")
    kind = document.get("mediaType") or media_type
    if kind in (OCI_INDEX, DOCKER_LIST) or "manifests" in document:
        if document.get("artifactType") == MODELKIT_INDEX_TYPE:
            return _parse_index(document, reference)
        raise NotAModelKit(
            f"{reference} is a multi-platform image index, not a ModelKit: check the reference"
        )
    config = Descriptor.parse(document.get("config"), f"{reference} config")
    artifact_type = document.get("artifactType")
    if artifact_type == MODELKIT_ARTIFACT_TYPE or config.media_type == MODELKIT_CONFIG:
        modelpack = False
    elif artifact_type == MODELPACK_ARTIFACT_TYPE or config.media_type == MODELPACK_CONFIG:
        modelpack = True
    else:
        what = (
            "a container image"
            if config.media_type in IMAGE_CONFIGS
            else (f"an artifact of type {artifact_type or config.media_type!r}")
        )
        raise NotAModelKit(
            f"{reference} is {what}, not a ModelKit: check the reference, or pack one "
            "with 'kit pack'"
        )
    layers = [
        parse_layer_type(Descriptor.parse(item, f"{reference} layer"), modelpack)
        for item in document.get("layers") or []
    ]
    return ModelKitManifest(config, layers, dict(document.get("annotations") or {}), modelpack)


def _parse_index(document: dict[str, Any], reference: str) -> ModelKitIndex:
    entries = []
    for item in document.get("manifests") or []:
        descriptor = Descriptor.parse(item, f"{reference} index entry")
        metadata = item.get("modelMetadata") or {}
        if not isinstance(metadata, dict):
            raise NotAModelKit(f"{reference}: an index entry has malformed modelMetadata")
        labels = {
            str(key): value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            for key, value in metadata.items()
        }
        tag = descriptor.annotations.get("ml.kitops.modelkit.original-tag")
        entries.append(IndexEntry(descriptor.digest, labels, tag))
    return ModelKitIndex(entries)
