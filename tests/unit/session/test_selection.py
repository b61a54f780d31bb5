"""A filter that selects nothing is named, with the kit's entries to choose from."""

from __future__ import annotations

from modelkitfs.session.options import MountOptions
from modelkitfs.session.selection import unmatched_filters

KITFILE = {
    "manifestVersion": "1.0.0",
    "model": {"name": "m", "path": "model.bin"},
    "datasets": [{"name": "train", "path": "data/train"}],
    "docs": [{"path": "README.md"}],
}


def test_only_filters_that_match_nothing_are_named() -> None:
    filters = MountOptions(filters=["model", "datasets:nope", "kitfile", "docs:README.md"]).filters
    assert unmatched_filters("r.io/k:v1", KITFILE, filters) == [
        "--filter datasets:nope matches nothing in r.io/k:v1, so nothing of it is shown; its "
        "entries are model m (model.bin), datasets train (data/train), docs README.md (ids are "
        "names or paths exactly as the Kitfile writes them)"
    ]
    assert unmatched_filters("r.io/k:v1", KITFILE, ()) == []
