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
    "name",
    [
        ".git", "__pycache__", "UPPER", "a..b", "llm@sha256:short", "llm:", "-x", "x y",
        "llm@sha256:" + "AB" * 32,  # a digest in upper case: no registry would know it
        "llm:v1@sha256:" + "ab" * 32 + "0",
        "llm@sha512:" + "ab" * 64,  # kits are named by sha256 alone
        "x" * 256,
        "y" * 250 + "@sha256:" + "ab" * 32,  # longer than a repository may be
    ],
)  # fmt: skip
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


def test_an_entry_nobody_holds_goes_with_the_folders_it_alone_kept() -> None:
    namespace = Namespace()
    root = namespace.get(ROOT)
    assert root is not None
    registry = namespace.child(root, "registry.example")
    assert registry is not None
    team = namespace.child(registry, "team")
    assert team is not None
    namespace.hold(registry)
    namespace.hold(team, 2)
    namespace.release(team.inode)
    assert namespace.get(team.inode) is team  # held once more
    namespace.release(team.inode)
    assert namespace.get(team.inode) is None and registry.children == {}
    assert namespace.get(registry.inode) is registry  # held on its own
    namespace.release(registry.inode)
    assert list(namespace.entries) == [ROOT]
    again = namespace.child(root, "other.example")
    assert again is not None and again.inode in (registry.inode, team.inode)  # numbers reused
    namespace.release(ROOT, 5)
    assert namespace.get(ROOT) is root  # the root stays
