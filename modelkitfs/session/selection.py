"""A ``--filter`` that selects nothing is almost always a typo (``model:nope``); the kit would
mount, list or prefetch as an empty folder without a word. This finds such filters and says
what the kit's entries are, so the warning can be acted on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from modelkitfs.kit import Filter
from modelkitfs.kit.plan import KitfileEntry, kitfile_entries

log = logging.getLogger("modelkitfs")

FILTER_TYPE = {
    "model": "model",
    "parts": "model",
    "datasets": "datasets",
    "code": "code",
    "docs": "docs",
    "prompts": "prompts",
    "mcpServers": "mcpservers",
}
MAX_NAMED = 12


def filter_text(one: Filter) -> str:
    return ",".join(one.types) + (f":{','.join(one.ids)}" if one.ids is not None else "")


def unmatched_filters(
    reference: str, kitfile: dict[str, Any], filters: Sequence[Filter]
) -> list[str]:
    """One warning per filter that selects no entry of the Kitfile (a filter naming
    ``kitfile`` always selects the Kitfile)."""
    try:
        entries = kitfile_entries(kitfile)
    except Exception:  # a malformed Kitfile is reported where the kit is opened
        return []
    warnings = []
    for one in filters:
        if "kitfile" in one.types or any(entry.selected_by([one]) for entry in entries):
            continue
        warnings.append(
            f"--filter {filter_text(one)} matches nothing in {reference}, so nothing of it is "
            f"shown; its entries are {_entries(entries)} (ids are names or paths exactly as "
            "the Kitfile writes them)"
        )
    return warnings


def warn_unmatched(reference: str, kitfile: dict[str, Any], filters: Sequence[Filter]) -> list[str]:
    """:func:`unmatched_filters`, each also logged as a warning."""
    warnings = unmatched_filters(reference, kitfile, filters)
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _entries(entries: list[KitfileEntry]) -> str:
    if not entries:
        return "none"
    named = [
        f"{FILTER_TYPE.get(e.section, e.section)} "
        + (f"{e.name} ({e.path})" if e.name and e.name != e.path else e.path)
        for e in entries[:MAX_NAMED]
    ]
    more = f" and {len(entries) - MAX_NAMED} more" if len(entries) > MAX_NAMED else ""
    return ", ".join(named) + more
