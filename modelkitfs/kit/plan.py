"""Which layer lands where, and in what order: the unpack plan of ``kit unpack``.

kit v0.5 and later records each entry's layer digest in the config, and unpacks entry by entry:
model, parts, datasets, code, docs, prompts, MCP servers, each in Kitfile order, every tar
member at its own path. Older kits have no digests: layers pair with entries by position among
layers of the same type, are unpacked in manifest order, and a layer's members are relative to
the parent directory of its entry's path.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelkitfs.errors import InvalidReference, NotAModelKit
from modelkitfs.kit.filters import Filter, selects
from modelkitfs.kit.manifest import Layer, ModelKitManifest
from modelkitfs.reference import parse_reference

log = logging.getLogger(__name__)

# Kitfile section -> (layer base type, filter type, whether kit matches ids against the name).
_SECTIONS = {
    "model": ("model", "model", True),
    "parts": ("modelpart", "model", True),
    "datasets": ("dataset", "datasets", True),
    "code": ("code", "code", False),
    "docs": ("docs", "docs", False),
    "prompts": ("prompt", "prompts", True),
    "mcpServers": ("mcpb", "mcpservers", True),
}


# A layer's base type -> the type --filter names it by (what inspect shows: -f datasets).
FILTER_TYPE_OF = {base: kind for base, kind, _ in _SECTIONS.values()}

LIST_SECTIONS = ("code", "docs", "prompts", "mcpServers")
ENTRY_STRINGS = ("path", "name", "digest", "diffId")


@dataclass(frozen=True)
class KitfileEntry:
    """A Kitfile entry that has a layer."""

    section: str
    path: str  # as written in the Kitfile
    name: str | None  # None where kit matches filters by path only
    digest: str | None
    diff_id: str | None

    @property
    def base(self) -> str:
        return _SECTIONS[self.section][0]

    def selected_by(self, filters: Sequence[Filter]) -> bool:
        return selects(filters, _SECTIONS[self.section][1], self.name, self.path)


@dataclass(frozen=True)
class PlannedLayer:
    layer: Layer
    entry: KitfileEntry
    prefix: str  # where the layer's members go, relative to the mount root ("" for the root)


def is_modelkit_reference(path: str) -> bool:
    """kit's test for a ``model.path`` that names another ModelKit instead of a file."""
    if ":" not in path and "@" not in path:
        return False
    try:
        parse_reference(path)
    except InvalidReference:
        return False
    return True


def kitfile_entries(kitfile: dict[str, Any]) -> list[KitfileEntry]:
    """The entries that have layers, in the order kit unpacks them. A config whose sections
    have the wrong JSON types is refused, as kit's decoder refuses it."""
    model = _typed(kitfile, "model", dict)
    sections: list[tuple[str, list[Any]]] = [
        ("model", [model] if model and model.get("path") else []),
        ("parts", _typed(model or {}, "parts", list, "model.parts") or []),
        (
            "datasets",
            [d for d in _typed(kitfile, "datasets", list) or [] if not _get(d, "remotePath")],
        ),
        *((section, _typed(kitfile, section, list) or []) for section in LIST_SECTIONS),
    ]
    entries = []
    for section, items in sections:
        by_name = _SECTIONS[section][2]
        for position, item in enumerate(items):
            if item is None:
                continue
            where = section if section == "model" else f"{section}[{position}]"
            if not isinstance(item, dict):
                raise _malformed(where, "an object", item)
            path, name, digest, diff_id = (
                _typed(item, key, str, f"{where}.{key}") for key in ENTRY_STRINGS
            )
            if section == "model" and is_modelkit_reference(path or ""):
                continue  # another ModelKit's model: it has no layer here
            entries.append(
                KitfileEntry(
                    section,
                    path or "",
                    (name or "") if by_name else None,
                    digest or None,
                    diff_id or None,
                )
            )
    return entries


def _typed(document: dict[str, Any], key: str, kind: type, where: str = "") -> Any:
    """``document[key]`` when it is null or of JSON type ``kind``; else the config is refused."""
    value = document.get(key)
    if value is None or isinstance(value, kind):
        return value
    expected: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    raise _malformed(where or key, expected[kind], value)


def _malformed(where: str, expected: str, value: Any) -> NotAModelKit:
    found = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )
    return NotAModelKit(
        f"the ModelKit config is not a valid Kitfile: {where} must be {expected}, not {found}; "
        "the artifact is corrupt: pack and push it again"
    )


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else None


def kitfile_for_modelpack(manifest: ModelKitManifest, diff_ids: list[str]) -> dict[str, Any]:
    """The Kitfile kit derives for a ModelPack artifact that carries none: the first weight is
    the model, later weights and weight configs its parts, then code, datasets and docs, each
    at its ``org.cncf.model.filepath``."""
    if diff_ids and len(diff_ids) != len(manifest.layers):
        raise NotAModelKit("invalid ModelPack config: number of layers does not match diffIds")
    kitfile: dict[str, Any] = {"manifestVersion": "1.0.0", "model": {}}
    model = kitfile["model"]
    for i, layer in enumerate(manifest.layers):
        if not layer.filepath:
            raise NotAModelKit(
                f"ModelPack layer {layer.digest} has no org.cncf.model.filepath annotation, so "
                "there is no telling where it goes"
            )
        item = {
            "path": layer.filepath,
            "digest": layer.digest,
            "diffId": diff_ids[i] if diff_ids else None,
        }
        if layer.base == "model" and not model.get("path"):
            model.update(item)
        elif layer.base in ("model", "modelpart"):
            model.setdefault("parts", []).append(item)
        else:
            section = {"code": "code", "dataset": "datasets", "docs": "docs"}[layer.base]
            kitfile.setdefault(section, []).append(item)
    return kitfile


def plan_layers(
    manifest: ModelKitManifest, kitfile: dict[str, Any], filters: Sequence[Filter]
) -> list[PlannedLayer]:
    """The selected layers in unpack order, each with its entry and where it goes."""
    entries = kitfile_entries(kitfile)
    with_digest = [entry.digest is not None for entry in entries]
    if any(with_digest) and not all(with_digest):
        raise NotAModelKit(
            "the ModelKit config gives layer digests for some entries but not all: the config "
            "is corrupt; pack and push the ModelKit again"
        )
    if all(with_digest):
        return _by_digest(manifest, entries, filters)
    return _by_position(manifest, entries, filters)


def _by_digest(
    manifest: ModelKitManifest, entries: list[KitfileEntry], filters: Sequence[Filter]
) -> list[PlannedLayer]:
    # Identical files at two paths have one digest and two layers: the n-th entry with a
    # digest takes the n-th layer with it.
    layers: dict[str, list[Layer]] = {}
    for layer in manifest.layers:
        layers.setdefault(layer.digest, []).append(layer)
    seen: dict[str, int] = {}
    planned = []
    for entry in entries:
        assert entry.digest is not None
        candidates = layers.get(entry.digest)
        if not candidates:
            raise NotAModelKit(
                f"the Kitfile's {entry.section} entry {entry.path!r} names layer {entry.digest}, "
                "which the manifest does not have: the ModelKit is corrupt; push it again"
            )
        n = seen.get(entry.digest, 0)
        seen[entry.digest] = n + 1
        if entry.selected_by(filters):
            planned.append(PlannedLayer(candidates[min(n, len(candidates) - 1)], entry, ""))
    return planned


def _by_position(
    manifest: ModelKitManifest, entries: list[KitfileEntry], filters: Sequence[Filter]
) -> list[PlannedLayer]:
    queues: dict[str, list[KitfileEntry]] = {}
    for entry in entries:
        queues.setdefault(entry.base, []).append(entry)
    planned = []
    for layer in manifest.layers:
        # A second model layer is the first part, as kit's legacy unpack falls through.
        base = layer.base
        if base == "model" and not queues.get("model"):
            base = "modelpart"
        queue = queues.get(base)
        if not queue:
            log.warning("layer %s has no %s entry in the Kitfile: skipping it", layer.digest, base)
            continue
        entry = queue.pop(0)
        if entry.selected_by(filters):
            parent = posixpath.dirname(posixpath.normpath(entry.path).lstrip("/"))
            planned.append(PlannedLayer(layer, entry, "" if parent == "." else parent))
    return planned
