"""Pick one ModelKit out of a ModelKit index by its labels, as ``kit unpack -l`` does."""

from __future__ import annotations

import re
from collections.abc import Sequence

from modelkitfs.errors import InvalidFilter, SelectionError
from modelkitfs.kit.manifest import IndexEntry, ModelKitIndex


def parse_labels(texts: Sequence[str]) -> dict[str, str]:
    """``key=value`` arguments as a selector; each key at most once."""
    selector: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise InvalidFilter(f"invalid label {text!r}: expected key=value")
        if key in selector:
            raise InvalidFilter(
                f"invalid label {text!r}: {key} is already set to {selector[key]!r}; each label "
                "can be specified only once"
            )
        selector[key] = value
    return selector


def select_entry(index: ModelKitIndex, selector: dict[str, str], reference: str) -> IndexEntry:
    """The one entry whose labels include every ``key=value`` of ``selector``."""
    if not index.entries:
        raise SelectionError(f"{reference} is a ModelKit index with no ModelKits in it")
    matches = [
        entry
        for entry in index.entries
        if all(entry.labels.get(key) == value for key, value in selector.items())
    ]
    if len(matches) == 1:
        return matches[0]
    repository = re.sub(r":[^/]*$", "", reference.rsplit("@", 1)[0])  # a tag, not a port
    if not matches:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
        raise SelectionError(
            f"no ModelKit in the index {reference} has {wanted}; it holds "
            f"{len(index.entries)}: {_describe(index.entries, repository)}"
        )
    raise SelectionError(
        f"{len(matches)} ModelKits in the index {reference} match; select one with --label "
        f"key=value: {_describe(matches, repository)}"
    )


def _describe(entries: Sequence[IndexEntry], repository: str) -> str:
    rows = []
    for entry in entries:
        name = f"{repository}:{entry.tag}" if entry.tag else f"{repository}@{entry.digest}"
        labels = ", ".join(f"{k}={v}" for k, v in sorted(entry.labels.items())) or "no labels"
        rows.append(f"{name} ({labels})")
    return "; ".join(rows)
