"""Open a ModelKit: manifest and config in, the merged tree out.

Only the manifest and the config are fetched here; layers are indexed when first looked at.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from modelkitfs.archive import open_layer
from modelkitfs.blobs import BlobStore
from modelkitfs.errors import NotAModelKit
from modelkitfs.kit.kitfile import render_kitfile
from modelkitfs.kit.manifest import Layer, ModelKitManifest, parse_manifest
from modelkitfs.kit.tree import KitTree, TreeLayer

MAX_CONFIG_SIZE = 4 * 1024 * 1024

# The order kit (v0.5 and later) extracts layers in; legacy kits extract in manifest order.
_EXTRACTION_ORDER = ("model", "modelpart", "dataset", "code", "docs", "prompt")


@dataclass
class ModelKit:
    reference: str
    manifest_digest: str
    manifest: ModelKitManifest
    config: dict[str, Any]
    tree: KitTree


async def open_modelkit(store: BlobStore, identifier: str, reference: str) -> ModelKit:
    """Fetch and check the manifest and config of ``reference`` and build its lazy tree."""
    fetched = await store.manifest(identifier)
    manifest = parse_manifest(fetched.raw, fetched.media_type, reference)
    if manifest.config.size > MAX_CONFIG_SIZE:
        raise NotAModelKit(
            f"{reference}: config of {manifest.config.size} bytes is implausibly large"
        )
    raw_config = await store.small_blob(manifest.config.digest, manifest.config.size)
    try:
        config = json.loads(raw_config)
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise NotAModelKit(
            f"{reference}: the ModelKit config is not a JSON object ({exc})"
        ) from None
    layers = [
        TreeLayer(
            open_layer(
                store.blob(layer.descriptor.digest, layer.descriptor.size),
                layer.format,
                layer.compression,
            ),
            _layer_path(layer, entry),
            layer.descriptor.media_type,
        )
        for layer, entry in map_layers(manifest.layers, config, reference)
    ]
    tree = KitTree(layers, render_kitfile(config))
    return ModelKit(reference, fetched.digest, manifest, config, tree)


def kitfile_entries(config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The Kitfile's entries that have layers, per layer base type, in Kitfile order."""
    model = config.get("model") if isinstance(config.get("model"), dict) else None
    sections: dict[str, list[Any]] = {
        "model": [model] if model and model.get("path") else [],
        "modelpart": list(model.get("parts") or []) if model else [],
        "code": list(config.get("code") or []),
        "dataset": [d for d in config.get("datasets") or [] if not d.get("remotePath")],
        "docs": list(config.get("docs") or []),
        "prompt": list(config.get("prompts") or []),
    }
    return {base: [e for e in entries if isinstance(e, dict)] for base, entries in sections.items()}


def map_layers(
    layers: list[Layer], config: dict[str, Any], reference: str
) -> list[tuple[Layer, dict[str, Any] | None]]:
    """Pair each layer with its Kitfile entry: by the entry's digest when the config records
    digests (kit v0.5 and later), else by position among layers of the same type. Returned in
    the order kit extracts them."""
    entries = kitfile_entries(config)
    seen: dict[str, int] = {}
    paired: list[tuple[Layer, dict[str, Any] | None]] = []
    for layer in layers:
        candidates = entries.get(layer.base, [])
        position = seen.get(layer.base, 0)
        seen[layer.base] = position + 1
        entry = candidates[position] if position < len(candidates) else None
        if entry is not None and entry.get("digest") not in (None, layer.descriptor.digest):
            matches = [e for e in candidates if e.get("digest") == layer.descriptor.digest]
            entry = matches[0] if matches else None
        paired.append((layer, entry))
    if any(entry is None or "digest" not in entry for _, entry in paired):
        return paired
    order = {base: n for n, base in enumerate(_EXTRACTION_ORDER)}
    return sorted(paired, key=lambda pair: order.get(pair[0].base, len(order)))


def _layer_path(layer: Layer, entry: dict[str, Any] | None) -> str:
    """The cleaned Kitfile path of the layer's entry; "" (everything) when unknown."""
    path = layer.filepath or (entry or {}).get("path") or "."
    cleaned = posixpath.normpath(path)
    return "" if cleaned in (".", "/") else cleaned.lstrip("/")
