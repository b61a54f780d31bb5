"""kit's filter syntax and meaning, checked against the examples of ``kit unpack --help``."""

from __future__ import annotations

import pytest

from modelkitfs.errors import InvalidFilter
from modelkitfs.kit.filters import Filter, parse_filter, parse_filters, selects, selects_kitfile
from modelkitfs.kit.plan import kitfile_entries

KITFILE = {
    "model": {"name": "llm", "path": "model", "parts": [{"name": "lora", "path": "lora.bin"}]},
    "datasets": [
        {"name": "my-dataset", "path": "data/train"},
        {"name": "validation", "path": "data/val"},
    ],
    "code": [{"path": "src"}],
    "docs": [{"path": "./README.md"}],
    "prompts": [{"name": "system", "path": "prompts/system.md"}],
}


def selected(*texts: str) -> list[str]:
    filters = parse_filters(texts)
    return [e.path for e in kitfile_entries(KITFILE) if e.selected_by(filters)]


@pytest.mark.parametrize(
    ("filters", "paths", "kitfile"),
    [
        (
            (),
            [
                "model",
                "lora.bin",
                "data/train",
                "data/val",
                "src",
                "./README.md",
                "prompts/system.md",
            ],
            True,
        ),
        (("model,datasets",), ["model", "lora.bin", "data/train", "data/val"], False),
        (("datasets:my-dataset",), ["data/train"], False),
        (("docs:./README.md",), ["./README.md"], False),
        (("docs:README.md",), [], False),  # ids match the path exactly as written
        (("model", "datasets:validation"), ["model", "lora.bin", "data/val"], False),
        (("kitfile",), [], True),
        (("kitfile,code",), ["src"], True),
        (("model:lora",), ["lora.bin"], False),
        (("datasets:data/val,my-dataset",), ["data/train", "data/val"], False),
        (("code:src",), ["src"], False),
        (("prompts",), ["prompts/system.md"], False),  # prompts are not code
        (("code",), ["src"], False),
    ],
)
def test_kit_help_examples(filters: tuple[str, ...], paths: list[str], kitfile: bool) -> None:
    assert selected(*filters) == paths
    assert selects_kitfile(parse_filters(filters)) is kitfile


def test_code_and_docs_match_by_path_only() -> None:
    filters = [parse_filter("code:src")]
    assert selects(filters, "code", None, "src")
    assert not selects([parse_filter("code:")], "code", None, "src")
    assert selects([parse_filter("datasets:")], "datasets", "", "data")  # an empty name matches


def test_parse() -> None:
    assert parse_filter("model,docs:a,b") == Filter(("model", "docs"), ("a", "b"))
    assert parse_filter("kitfile") == Filter(("kitfile",), None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model:a:b", "Invalid filter 'model:a:b': should be in format <type1>,<type2>"),
        (
            "weights",
            "invalid filter type weights (must be one of kitfile, model, datasets, "
            "code, prompts, docs, mcpservers)",
        ),
        ("model,,docs", "invalid filter type  (must be one of"),
        ("", "invalid filter type  (must be one of"),
    ],
)
def test_bad_filters(text: str, message: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        parse_filter(text)
    assert message in str(caught.value)
