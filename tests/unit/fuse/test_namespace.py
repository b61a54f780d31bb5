"""What a name under a serve root is, from its spelling alone."""

from __future__ import annotations

import pytest

from modelkitfs.fuse.namespace import ROOT, Kind, Namespace, classify

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("path", "name", "kind", "reference"),
    [
        ("", "registry.example:5000", Kind.FOLDER, None),
        ("", "registry.example", Kind.FOLDER, None),
        ("", "team", Kind.FOLDER, None),  # a repository of kit's local storage
        ("", "mykit:v1", Kind.TAG, "localhost/mykit:v1"),
        ("registry.example:5000", "team", Kind.FOLDER, None),
        ("registry.example:5000/team", "llm:v1", Kind.TAG, "registry.example:5000/team/llm:v1"),
        (
            "registry.example:5000/team",
            f"llm@{DIGEST}",
            Kind.KIT,
            f"registry.example:5000/team/llm@{DIGEST}",
        ),
    ],
)
def test_names_that_are_part_of_a_reference(
    path: str, name: str, kind: Kind, reference: str | None
) -> None:
    found = classify(path, name)
    assert found is not None
    assert found[0] is kind
    assert (str(found[1]) if found[1] else None) == reference


@pytest.mark.parametrize(
    "name", [".git", "__pycache__", "UPPER", "a..b", "llm@sha256:short", "llm:", "-x", "x y"]
)
def test_names_no_reference_can_hold(name: str) -> None:
    assert classify("registry.example", name) is None


def test_a_registry_port_is_a_folder_only_at_the_root() -> None:
    assert classify("", "host.example:5000") == (Kind.FOLDER, None)
    found = classify("host.example", "llm:5000")
    assert found is not None and found[0] is Kind.TAG


def test_entries_are_made_once_and_found_again() -> None:
    namespace = Namespace()
    root = namespace.get(ROOT)
    assert root is not None
    registry = namespace.child(root, "registry.example")
    assert registry is not None and registry.path == "registry.example"
    tag = namespace.child(registry, "llm:v1")
    assert (
        tag is not None and tag.path == "registry.example/llm:v1" and tag.parent == registry.inode
    )
    assert namespace.child(registry, "llm:v1") is tag
    assert namespace.child(registry, ".git") is None
    assert set(registry.children) == {"llm:v1"}
