"""Which kits a cache has held: ``kits/<manifest>.json`` in the cache folder, one per kit.

The block cache is keyed by digest alone and knows nothing of kits; a record written when a
kit is opened (by a mount, a prefetch, a read without mounting) names its references and, for
each layer, its type and Kitfile path. ``modelkitfs list`` lists the kits, ``cache ls`` names
the kit and path each blob belongs to. A cache that cannot be written just keeps no record.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelkitfs.cache import make_folders
from modelkitfs.kit import ModelKit

FOLDER = "kits"


@dataclass(frozen=True)
class LayerRecord:
    digest: str
    kind: str
    path: str
    size: int


@dataclass(frozen=True)
class KitRecord:
    manifest: str
    references: tuple[str, ...]  # most recently opened first
    layers: tuple[LayerRecord, ...]
    last_used: float


def record_kit(cache_dir: str | os.PathLike[str], reference: str, kit: ModelKit) -> None:
    """Note that ``kit`` was opened as ``reference`` (best effort: never fails)."""
    folder = Path(cache_dir) / FOLDER
    path = folder / f"{kit.manifest_digest.partition(':')[2]}.json"
    known = _read(path)
    references = [reference, *(r for r in (known.references if known else ()) if r != reference)]
    layers = [
        {
            "digest": layer.digest,
            "kind": layer.base,
            "path": layer.filepath or "",
            "size": layer.descriptor.size,
        }
        for layer in kit.manifest.layers
    ]
    document = {
        "manifest": kit.manifest_digest,
        "references": references,
        "layers": layers,
        "last_used": time.time(),
    }
    with contextlib.suppress(OSError):
        make_folders(folder)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as out:
            json.dump(document, out)
        os.replace(out.name, path)


def recorded_kits(cache_dir: str | os.PathLike[str]) -> list[KitRecord]:
    """Every kit recorded in the cache, most recently used first."""
    folder = Path(cache_dir) / FOLDER
    try:
        paths = sorted(folder.glob("*.json"))
    except OSError:
        return []
    found = [record for path in paths if (record := _read(path)) is not None]
    return sorted(found, key=lambda record: -record.last_used)


def owners(records: list[KitRecord]) -> dict[str, list[tuple[KitRecord, LayerRecord]]]:
    """Per blob digest, the kits and layers it belongs to."""
    found: dict[str, list[tuple[KitRecord, LayerRecord]]] = {}
    for record in records:
        for layer in record.layers:
            found.setdefault(layer.digest, []).append((record, layer))
    return found


def _read(path: Path) -> KitRecord | None:
    try:
        document: Any = json.loads(path.read_text())
        return KitRecord(
            str(document["manifest"]),
            tuple(str(r) for r in document["references"]),
            tuple(
                LayerRecord(str(x["digest"]), str(x["kind"]), str(x["path"]), int(x["size"]))
                for x in document["layers"]
            ),
            float(document["last_used"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
