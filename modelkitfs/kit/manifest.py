"""Recognise a ModelKit manifest and describe its layers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from modelkitfs.errors import NotAModelKit

MODELKIT_ARTIFACT_TYPE = "application/vnd.kitops.modelkit.manifest.v1+json"
MODELKIT_CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
MODELKIT_INDEX_TYPE = "application/vnd.kitops.modelkit.index.v1+json"
LAYER_PREFIX = "application/vnd.kitops.modelkit."
SUBTYPE_ANNOTATION = "ml.kitops.modelkit.layer-subtype"
FILEPATH_ANNOTATION = "org.cncf.model.filepath"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_CONFIGS = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any, what: str) -> Descriptor:
        try:
            digest, size = raw["digest"], int(raw["size"])
            media_type = raw.get("mediaType", "")
            annotations = raw.get("annotations") or {}
        except (KeyError, TypeError, ValueError) as exc:
            raise NotAModelKit(f"{what} has a malformed descriptor: {exc}") from None
        if not isinstance(digest, str) or size < 0:
            raise NotAModelKit(f"{what} has a malformed descriptor")
        return cls(media_type, digest, size, dict(annotations))


@dataclass(frozen=True)
class Layer:
    """A ModelKit layer: which kind of Kitfile entry it holds, and how it is encoded."""

    descriptor: Descriptor
    base: str  # model, modelpart, dataset, code, docs, prompt
    format: str  # tar or raw
    compression: str  # "" (none), gzip, zstd

    @property
    def filepath(self) -> str | None:
        return self.descriptor.annotations.get(FILEPATH_ANNOTATION)


@dataclass(frozen=True)
class ModelKitManifest:
    config: Descriptor
    layers: list[Layer]
    annotations: dict[str, str]


def parse_layer_type(descriptor: Descriptor) -> Layer:
    """Split ``application/vnd.kitops.modelkit.<base>.v1.<format>[+<compression>]``."""
    media_type = descriptor.media_type
    if not media_type.startswith(LAYER_PREFIX):
        raise NotAModelKit(
            f"layer {descriptor.digest} has media type {media_type!r}, not a ModelKit layer"
        )
    rest = media_type[len(LAYER_PREFIX) :]
    base, _, encoding = rest.partition(".v1.")
    fmt, _, compression = encoding.partition("+")
    if base not in {"model", "modelpart", "dataset", "code", "docs"} or fmt not in {"tar", "raw"}:
        raise NotAModelKit(f"layer {descriptor.digest} has unknown media type {media_type!r}")
    if base == "code" and descriptor.annotations.get(SUBTYPE_ANNOTATION) == "prompt":
        base = "prompt"
    return Layer(descriptor, base, fmt, compression)


def parse_manifest(raw: bytes, media_type: str, reference: str) -> ModelKitManifest:
    """Parse ``raw`` as a ModelKit manifest, or say clearly what else it is."""
    try:
        document = json.loads(raw)
    except ValueError:
        raise NotAModelKit(f"{reference}: the registry sent a manifest that is not JSON") from None
    if not isinstance(document, dict):
        raise NotAModelKit(f"{reference}: the manifest is not a JSON object")
    kind = document.get("mediaType") or media_type
    if kind in (OCI_INDEX, DOCKER_LIST) or "manifests" in document:
        if document.get("artifactType") == MODELKIT_INDEX_TYPE:
            raise NotAModelKit(
                f"{reference} is a ModelKit index; mounting one entry of an index by its labels "
                "is not supported yet: mount the entry's digest (REPO@sha256:...) instead"
            )
        raise NotAModelKit(
            f"{reference} is a multi-platform image index, not a ModelKit: check the reference"
        )
    config = Descriptor.parse(document.get("config"), f"{reference} config")
    artifact_type = document.get("artifactType")
    if artifact_type != MODELKIT_ARTIFACT_TYPE and config.media_type != MODELKIT_CONFIG:
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
        parse_layer_type(Descriptor.parse(item, f"{reference} layer"))
        for item in document.get("layers") or []
    ]
    return ModelKitManifest(config, layers, dict(document.get("annotations") or {}))
