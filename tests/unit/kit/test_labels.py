"""Picking a ModelKit out of an index by labels, as ``kit unpack -l`` does: ``key=value``
arguments parsed once, exactly one entry matching, and a refusal that lists what the index
holds under names the user can mount."""

from __future__ import annotations

import pytest

from modelkitfs.errors import InvalidFilter, SelectionError
from modelkitfs.kit.labels import parse_labels, select_entry
from modelkitfs.kit.manifest import IndexEntry, ModelKitIndex

Q4 = "sha256:" + "4" * 64
Q8 = "sha256:" + "8" * 64
F16 = "sha256:" + "f" * 64
INDEX = ModelKitIndex(
    [
        IndexEntry(Q4, {"quantization": "q4_0", "format": "gguf"}, "q4_0"),
        IndexEntry(Q8, {"quantization": "q8_0", "format": "gguf"}, "q8_0"),
        IndexEntry(F16, {}, None),
    ]
)
REFERENCE = "reg.example/team/llm:all"


@pytest.mark.parametrize(
    ("texts", "selector"),
    [
        ([], {}),
        (["quantization=q4_0", "format=gguf"], {"quantization": "q4_0", "format": "gguf"}),
        (["note="], {"note": ""}),  # an empty value is a value
        (["expr=a=b"], {"expr": "a=b"}),  # the first '=' splits
    ],
)
def test_labels_are_key_value_pairs(texts: list[str], selector: dict[str, str]) -> None:
    assert parse_labels(texts) == selector


@pytest.mark.parametrize("text", ["quantization", "=q4_0", ""])
def test_a_label_without_a_key_or_an_equals_sign_is_refused(text: str) -> None:
    with pytest.raises(InvalidFilter) as refused:
        parse_labels([text])
    assert str(refused.value) == f"invalid label {text!r}: expected key=value"


def test_a_key_given_twice_is_refused_naming_its_first_value() -> None:
    with pytest.raises(InvalidFilter) as refused:
        parse_labels(["quantization=q4_0", "quantization=q8_0"])
    assert str(refused.value) == (
        "invalid label 'quantization=q8_0': quantization is already set to 'q4_0'; each label "
        "can be specified only once"
    )


@pytest.mark.parametrize(
    ("selector", "digest"),
    [
        ({"quantization": "q8_0"}, Q8),
        ({"format": "gguf", "quantization": "q4_0"}, Q4),  # every label must match
    ],
)
def test_the_one_entry_having_every_label_is_picked(selector: dict[str, str], digest: str) -> None:
    assert select_entry(INDEX, selector, REFERENCE).digest == digest


def test_an_index_of_one_needs_no_label() -> None:
    only = ModelKitIndex([IndexEntry(Q4, {"quantization": "q4_0"}, "q4_0")])
    assert select_entry(only, {}, REFERENCE).digest == Q4


def test_no_match_lists_every_entry_by_the_name_to_mount_it_under() -> None:
    with pytest.raises(SelectionError) as refused:
        select_entry(INDEX, {"quantization": "q2_k", "format": "gguf"}, REFERENCE)
    assert str(refused.value) == (
        "no ModelKit in the index reg.example/team/llm:all has format=gguf, quantization=q2_k; "
        "it holds 3: reg.example/team/llm:q4_0 (format=gguf, quantization=q4_0); "
        "reg.example/team/llm:q8_0 (format=gguf, quantization=q8_0); "
        f"reg.example/team/llm@{F16} (no labels)"
    )


def test_several_matches_list_the_matches_alone() -> None:
    with pytest.raises(SelectionError) as refused:
        select_entry(INDEX, {"format": "gguf"}, REFERENCE)
    assert str(refused.value) == (
        "2 ModelKits in the index reg.example/team/llm:all match; select one with --label "
        "key=value: reg.example/team/llm:q4_0 (format=gguf, quantization=q4_0); "
        "reg.example/team/llm:q8_0 (format=gguf, quantization=q8_0)"
    )


def test_an_empty_index_is_named() -> None:
    with pytest.raises(SelectionError) as refused:
        select_entry(ModelKitIndex([]), {"quantization": "q4_0"}, REFERENCE)
    assert str(refused.value) == f"{REFERENCE} is a ModelKit index with no ModelKits in it"


@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        ("reg.example/team/llm:all", "reg.example/team/llm"),
        (f"reg.example/team/llm@{F16}", "reg.example/team/llm"),
        (f"reg.example/team/llm:all@{F16}", "reg.example/team/llm"),
        ("localhost:5000/team/llm:all", "localhost:5000/team/llm"),
        (f"localhost:5000/team/llm@{F16}", "localhost:5000/team/llm"),  # a port, no tag
        (f"oci-layout:/srv/kits/llm@{F16}", "oci-layout:/srv/kits/llm"),
    ],
)
def test_the_names_listed_are_of_the_index_s_repository(reference: str, repository: str) -> None:
    """Before, an index named by digest on a registry with a port (or in a layout) listed its
    entries as 'localhost:q4_0': the port taken for a tag."""
    with pytest.raises(SelectionError) as refused:
        select_entry(INDEX, {"format": "gguf"}, reference)
    assert f"key=value: {repository}:q4_0 (" in str(refused.value)
