"""kit's selective unpack filters (``kit unpack --filter``), with kit's syntax and meaning.

A filter is ``<type>[,<type>...][:<id>[,<id>...]]``. An entry is selected when any filter names
its type and either lists no ids or lists the entry's name or path exactly as the Kitfile writes
it (``docs:./README.md`` does not match ``README.md``). ``model`` also selects model parts. With
no filters everything is selected; with filters the Kitfile only when one names ``kitfile``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelkitfs.errors import InvalidFilter

FILTER_TYPES = ("kitfile", "model", "datasets", "code", "prompts", "docs", "mcpservers")


@dataclass(frozen=True)
class Filter:
    types: tuple[str, ...]
    ids: tuple[str, ...] | None = None  # None: every entry of the types


def parse_filter(text: str) -> Filter:
    parts = text.split(":")
    if len(parts) > 2:
        raise InvalidFilter(
            f"Invalid filter {text!r}: should be in format <type1>,<type2>[:<filter1>,<filter2>]"
        )
    types = tuple(parts[0].split(","))
    for kind in types:
        if kind not in FILTER_TYPES:
            raise InvalidFilter(
                f"Invalid filter {text!r}: invalid filter type {kind} "
                f"(must be one of {', '.join(FILTER_TYPES)})"
            )
    return Filter(types, tuple(parts[1].split(",")) if len(parts) == 2 else None)


def parse_filters(texts: Sequence[str]) -> list[Filter]:
    return [parse_filter(text) for text in texts]


def selects(filters: Sequence[Filter], kind: str, name: str | None, path: str) -> bool:
    """Whether an entry of filter type ``kind`` is selected. ``name`` is None for the entries
    kit matches by path only (code, docs)."""
    if not filters:
        return True
    keys = {path} if name is None else {path, name}
    return any(kind in f.types and (f.ids is None or not keys.isdisjoint(f.ids)) for f in filters)


def selects_kitfile(filters: Sequence[Filter]) -> bool:
    return not filters or any("kitfile" in f.types for f in filters)


def for_referenced_model(filters: Sequence[Filter]) -> list[Filter] | None:
    """The filters a ``model.path`` ModelKit reference is unpacked with: its model and parts
    only, keeping the ids of filters that name ``model``; None when nothing of it is wanted."""
    if not filters:
        return [Filter(("model",))]
    kept = [Filter(("model",), f.ids) for f in filters if "model" in f.types]
    return kept or None
