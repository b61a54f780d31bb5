"""Saved layer indexes: read back only what was written, never a path outside the layer."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelkitfs.archive import EntryKind, LayerIndex
from modelkitfs.archive.index import Entry

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def test_round_trip() -> None:
    index = LayerIndex(
        [Entry("a/b", EntryKind.FILE, 0o644, 3, 512), Entry("a", EntryKind.DIRECTORY, 0o755)]
    )
    assert LayerIndex.from_json(index.to_json()) == index


@pytest.mark.parametrize("path", ["../etc/passwd", "/abs", "a/../../b", "a/./b", "a//b", "a\0b"])
def test_paths_outside_or_unclean_are_refused(path: str) -> None:
    row = [path, "file", 0o644, 1, 512, ""]
    with pytest.raises(ValueError):
        LayerIndex.from_json(json.dumps({"version": 1, "entries": [row]}).encode())


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_fuzz_garbage_is_a_value_error(data: bytes) -> None:
    try:
        index = LayerIndex.from_json(data)
    except ValueError:
        return
    assert all(isinstance(entry.kind, EntryKind) for entry in index.entries)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(max_size=12),
            st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo"]),
            st.integers(-2, 2**40),
            st.integers(-2, 2**40),
            st.integers(-2, 2**40),
            st.text(max_size=4),
        ),
        max_size=5,
    )
)
def test_fuzz_rows_are_checked(rows: list[tuple]) -> None:
    data = json.dumps({"version": 1, "entries": rows}).encode()
    try:
        index = LayerIndex.from_json(data)
    except ValueError:
        return
    for entry in index.entries:
        assert not entry.path.startswith("/") and ".." not in entry.path.split("/")
        assert min(entry.mode, entry.size, entry.offset) >= 0
