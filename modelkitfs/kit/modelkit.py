"""Open a ModelKit: manifest and config in, the merged tree out.

Only manifests and configs are fetched here (of the ModelKit, of the index entry picked by label,
of ModelKits that ``model.path`` names); layers are indexed when first looked at.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelkitfs.archive import RawFile, open_layer
from modelkitfs.archive.layer import RAW_FILE_MODE
from modelkitfs.blobs import BlobStore
from modelkitfs.errors import NotAllowed, NotAModelKit, SelectionError
from modelkitfs.kit.filters import Filter, for_referenced_model, selects_kitfile
from modelkitfs.kit.kitfile import render_kitfile
from modelkitfs.kit.labels import select_entry
from modelkitfs.kit.manifest import (
    FILE_METADATA_ANNOTATION,
    KITFILE_ANNOTATION,
    ModelKitIndex,
    ModelKitManifest,
    parse_manifest,
)
from modelkitfs.kit.plan import (
    PlannedLayer,
    is_modelkit_reference,
    kitfile_for_modelpack,
    plan_layers,
)
from modelkitfs.kit.tree import KitTree, TreeLayer
from modelkitfs.reference import DEFAULT_REGISTRY, Reference, parse_reference

log = logging.getLogger(__name__)

MAX_CONFIG_SIZE = 4 * 1024 * 1024
MAX_MODEL_REFERENCES = 10

StoreFor = Callable[[Reference], BlobStore]
"""The blob store of a reference's registry and repository (model.path may name another)."""

CheckSigned = Callable[[Reference, str], Awaitable[object]]
"""Refuses a manifest digest (of the reference it was resolved from) that the session's
signature policy does not trust, before anything of it is read (README, Signed kits)."""


@dataclass
class ModelKit:
    reference: str
    manifest_digest: str
    manifest: ModelKitManifest
    kitfile: dict[str, Any]
    tree: KitTree
    named_digest: str  # what the reference resolved to: an index's, for one of its entries


@dataclass
class _Resolved:
    reference: Reference
    store: BlobStore
    digest: str
    named_digest: str  # the index's, when ``digest`` is an entry picked from it
    manifest: ModelKitManifest
    kitfile: dict[str, Any]
    has_kitfile: bool  # False when derived from a ModelPack's layers: kit writes no Kitfile


async def open_modelkit(
    store_for: StoreFor,
    reference: Reference,
    *,
    filters: Sequence[Filter] = (),
    labels: Mapping[str, str] | None = None,
    check: CheckSigned | None = None,
) -> ModelKit:
    """Resolve ``reference`` (picking an index entry by ``labels``) and build its lazy tree,
    holding what ``kit unpack --filter ...`` would write. ``check`` is given every manifest
    digest a reference resolves to (the kit's, and those of the kits its ``model.path`` names)
    as soon as it is fetched: the digest opened, never a tag's value read separately."""
    kit = await _resolve(store_for, reference, labels or {}, check)
    layers = await _tree_layers(store_for, kit, filters, [], check)
    kitfile = render_kitfile(kit.kitfile) if kit.has_kitfile and selects_kitfile(filters) else None
    tree = KitTree(layers, kitfile)
    return ModelKit(str(reference), kit.digest, kit.manifest, kit.kitfile, tree, kit.named_digest)


async def _resolve(
    store_for: StoreFor, ref: Reference, labels: Mapping[str, str], check: CheckSigned | None
) -> _Resolved:
    store = store_for(ref)
    fetched = await store.source.get_manifest(store.repository, ref.identifier)
    named = fetched.digest
    if check is not None:  # an index's entries are named by the digest checked here
        await check(ref, fetched.digest)
    parsed = parse_manifest(fetched.raw, fetched.media_type, str(ref))
    if isinstance(parsed, ModelKitIndex):
        entry = select_entry(parsed, dict(labels), str(ref))
        fetched = await store.source.get_manifest(store.repository, entry.digest)
        parsed = parse_manifest(fetched.raw, fetched.media_type, f"{ref}@{entry.digest}")
        if isinstance(parsed, ModelKitIndex):
            raise NotAModelKit(f"{ref}: index entry {entry.digest} is an index itself")
    elif labels:
        raise SelectionError(
            f"--label picks a ModelKit out of a ModelKit index, but {ref} is a ModelKit: "
            "mount it without --label"
        )
    kitfile, has_kitfile = await _kitfile(store, parsed, str(ref))
    return _Resolved(ref, store, fetched.digest, named, parsed, kitfile, has_kitfile)


async def _kitfile(
    store: BlobStore, manifest: ModelKitManifest, reference: str
) -> tuple[dict[str, Any], bool]:
    """The Kitfile: the config of a kit-format ModelKit; the annotation of a ModelPack, else
    derived from its layers."""
    if manifest.modelpack:
        annotation = manifest.annotations.get(KITFILE_ANNOTATION)
        if annotation:
            return _json_object(annotation.encode(), f"{reference}: the Kitfile annotation"), True
        log.warning("%s carries no Kitfile: deriving one from its layers", reference)
        config = await _config(store, manifest, reference)
        modelfs = config.get("modelfs")
        listed = modelfs.get("diffIds") if isinstance(modelfs, dict) else None
        diff_ids = [str(d) for d in listed or []]
        return kitfile_for_modelpack(manifest, diff_ids), False
    return await _config(store, manifest, reference), True


async def _config(store: BlobStore, manifest: ModelKitManifest, reference: str) -> dict[str, Any]:
    if manifest.config.size > MAX_CONFIG_SIZE:
        raise NotAModelKit(
            f"{reference}: config of {manifest.config.size} bytes is implausibly large"
        )
    config = manifest.config
    raw = await store.source.get_blob(store.repository, config.digest, config.size)
    return _json_object(raw, f"{reference}: the config")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(raw)
        if not isinstance(document, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise NotAModelKit(f"{what} is not a JSON object ({exc})") from None
    return document


async def _tree_layers(
    store_for: StoreFor,
    kit: _Resolved,
    filters: Sequence[Filter],
    chain: list[str],
    check: CheckSigned | None,
) -> list[TreeLayer]:
    """The layers of ``kit`` in unpack order, preceded by the model of the ModelKit its
    ``model.path`` names, if it names one (as kit unpacks it: model and parts only)."""
    layers: list[TreeLayer] = []
    model = kit.kitfile.get("model")
    path = model.get("path") if isinstance(model, dict) else None
    if isinstance(path, str) and is_modelkit_reference(path):
        wanted = for_referenced_model(filters)
        if wanted is not None:
            ref = _named_by(kit.reference, path)
            if str(ref) in chain:
                cycle = [*chain[chain.index(str(ref)) :], str(ref)]
                raise SelectionError(f"found cycle in modelkit references: [{'=>'.join(cycle)}]")
            chain = [*chain, str(ref)]
            if len(chain) > MAX_MODEL_REFERENCES:
                raise SelectionError(
                    f"reached maximum number of model references: [{'=>'.join(chain)}]"
                )
            referenced = await _resolve(store_for, ref, {}, check)
            layers += await _tree_layers(store_for, referenced, wanted, chain, check)
    for planned in plan_layers(kit.manifest, kit.kitfile, filters):
        layers.append(_tree_layer(kit.store, planned))
    return layers


def _named_by(kit: Reference, text: str) -> Reference:
    """The ModelKit that ``kit``'s ``model.path`` names. Whoever pushed the kit wrote it, so it
    names a registry reference: never a folder of this machine, and kit's local storage only
    from a kit that is itself there (README, Security)."""
    ref = parse_reference(text)
    if ref.is_layout or (ref.registry == DEFAULT_REGISTRY and kit.registry != DEFAULT_REGISTRY):
        where = "a folder" if ref.is_layout else "kit's local storage"
        raise NotAllowed(
            f"{kit}: its model.path {text!r} names {where} of this machine; a kit's model.path "
            "may name only a registry reference (registry.example/team/model:v1): ask its "
            "publisher to push the referenced kit and name it there"
        )
    return ref


def _tree_layer(store: BlobStore, planned: PlannedLayer) -> TreeLayer:
    layer, entry = planned.layer, planned.entry
    raw = _raw_file(planned) if layer.format == "raw" else None
    archive = open_layer(
        store.blob(layer.digest, layer.descriptor.size),
        layer.compression,
        diff_id=entry.diff_id,
        raw=raw,
    )
    cleaned = posixpath.normpath(raw.path if raw else layer.filepath or entry.path or ".")
    return TreeLayer(
        archive,
        "" if cleaned in (".", "/") else cleaned.lstrip("/"),
        entry.base,
        planned.prefix,
        layer.descriptor.media_type,
    )


def _raw_file(planned: PlannedLayer) -> RawFile:
    """A raw layer's one file: path from ``org.cncf.model.filepath``, mode and size from the
    file metadata annotation (0644 and unknown without one)."""
    layer = planned.layer
    path = layer.filepath or planned.entry.path
    metadata = layer.descriptor.annotations.get(FILE_METADATA_ANNOTATION)
    if not metadata:
        return RawFile(path)
    document = _json_object(
        metadata.encode(), f"the {FILE_METADATA_ANNOTATION} annotation of layer {layer.digest}"
    )
    try:
        mode = int(document.get("mode", RAW_FILE_MODE)) & 0o777
        size = int(document["size"]) if "size" in document else None
    except (TypeError, ValueError):
        raise NotAModelKit(
            f"the {FILE_METADATA_ANNOTATION} annotation of layer {layer.digest} has a "
            "malformed mode or size"
        ) from None
    return RawFile(path, mode, size)
