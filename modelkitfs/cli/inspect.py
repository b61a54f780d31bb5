"""``modelkitfs inspect``: a kit from its manifest and config alone (no layer is fetched).

The report is built here, from what :class:`~modelkitfs.reader.KitReader` opened: the Kitfile's
sections as they are (``--json`` keeps every field), the Kitfile itself as YAML
(``--kitfile``), and every layer of the manifest with its media type, size, compression, digest
and how much of it is cached.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from modelkitfs.cli.output import human, print_json, share, table
from modelkitfs.cli.parser import Commands, json_argument, kit_arguments, open_reader
from modelkitfs.kit.kitfile import render_kitfile
from modelkitfs.kit.plan import FILTER_TYPE_OF
from modelkitfs.reader import KitReader
from modelkitfs.signing import Signer

SECTIONS = ("datasets", "code", "docs", "prompts")


def add(commands: Commands) -> None:
    i = commands.add("inspect", run_inspect)
    i.add_argument("reference", metavar="REFERENCE")
    shown = i.add_mutually_exclusive_group()
    json_argument(shown)  # type: ignore[arg-type]
    shown.add_argument("--kitfile", action="store_true", help="print the Kitfile (YAML) only")
    kit_arguments(i, fetches=False)


def run_inspect(args: argparse.Namespace) -> None:
    """show a ModelKit's Kitfile and layers without mounting

    Show REFERENCE from its manifest and config alone (no layer is fetched): package, model,
    datasets, code, docs, and each layer with its media type, size, compression, digest and
    how much of it is cached.

    examples:
      modelkitfs inspect {KIT}
      modelkitfs inspect --kitfile {KIT}
      modelkitfs inspect --json {KIT} | jq '.layers[].digest'
    """
    with open_reader(args) as reader:
        if args.kitfile:
            assert reader.kit is not None
            sys.stdout.write(render_kitfile(reader.kit.kitfile).decode())
            return
        kit = reader.call("inspect", _describe, reader)
    if args.json:
        print_json(kit)
        return
    print(f"reference {kit['reference']}")
    print(f"manifest  {kit['manifest']}")
    print(f"signed    {_signed(kit['signatures'])}")
    for section in ("package", "model"):
        if kit[section]:
            print(f"{section:9} {_summary(kit[section])}")
    for section in SECTIONS:
        for entry in kit[section]:
            print(f"{section:9} {_summary(entry)}")
    print(
        f"\nlayers    {len(kit['layers'])}, {human(kit['size'])}, "
        f"{share(kit['cached'], kit['size'])} cached"
    )
    rows = [("TYPE", "PATH", "SIZE", "COMPRESSION", "CACHED", "DIGEST", "MEDIA TYPE")]
    for layer in kit["layers"]:
        rows.append(
            (
                layer["type"] + ("" if layer["selected"] else " (filtered out)"),
                layer["path"] or ".",
                human(layer["size"]),
                layer["compression"],
                share(layer["cached"], layer["size"]),
                layer["digest"][:19],
                layer["media_type"],
            )
        )
    table(rows)


async def _describe(reader: KitReader) -> dict[str, Any]:
    """The kit as ``inspect`` shows it: the Kitfile's sections with every field, and every
    layer of the manifest with what the cache holds of it."""
    assert reader.kit is not None and reader.sources is not None
    kit = reader.kit
    in_tree = {layer.archive.digest: layer for layer in kit.tree.layers}
    store = reader.sources.store_for(reader.ref)
    layers = []
    for layer in kit.manifest.layers:
        shown = in_tree.get(layer.digest)
        size = layer.descriptor.size
        layers.append(
            {
                "type": FILTER_TYPE_OF.get(layer.base, layer.base),  # as --filter names it
                "layer_type": layer.base,
                "path": shown.path if shown else (layer.filepath or ""),
                "media_type": layer.descriptor.media_type,
                "format": layer.format,
                "compression": layer.compression or "none",
                "size": size,
                "cached": await store.blob(layer.digest, size).cached_bytes(),
                "digest": layer.digest,
                "selected": shown is not None,
            }
        )
    kitfile = kit.kitfile
    signed = kit.named_digest  # an index's signatures, for a kit picked from one
    found = await reader.sources.signatures(reader.ref, signed)
    verdict = await reader.sources.check_signed(reader.ref, signed)
    signers = [signer.as_dict() for signer in verdict.signers] if verdict else None
    return {
        "reference": reader.reference,
        "manifest": kit.manifest_digest,
        "signatures": {**found, "signers": signers},
        "manifestVersion": kitfile.get("manifestVersion"),
        "package": _section(kitfile.get("package")),
        "model": _section(kitfile.get("model")),
        **{
            section: [_section(entry) for entry in _entries(kitfile.get(section))]
            for section in SECTIONS
        },
        "size": sum(layer["size"] for layer in layers),
        "cached": sum(layer["cached"] for layer in layers),
        "layers": layers,
    }


def _signed(signatures: dict[str, Any]) -> str:
    """Whether the kit carries signatures, and whose were checked (README, Signed kits)."""
    counts = [f"{signatures[kind]} {kind}" for kind in ("classic", "bundle") if signatures[kind]]
    carried = ", ".join(counts) + " signature(s)" if counts else "no signature"
    signers = signatures["signers"]
    if signers is None:
        return f"{carried} (not checked: give --verify-key or --certificate-identity)"
    return f"{carried}; valid: " + ("; ".join(str(Signer(**s)) for s in signers) or "none")


def _section(section: Any) -> dict[str, Any]:
    """A Kitfile section with every field it has (a malformed one: nothing)."""
    return dict(section) if isinstance(section, dict) else {}


def _entries(section: Any) -> list[Any]:
    return list(section) if isinstance(section, list) else []


def _summary(section: dict[str, Any]) -> str:
    words = [
        str(section[key])
        for key in ("name", "path", "version", "framework")
        if section.get(key) not in (None, "", [])
    ]
    if section.get("authors"):
        words.append(f"(by {', '.join(map(str, section['authors']))})")
    if section.get("description"):
        words.append(f"- {section['description']}")
    return " ".join(words)
