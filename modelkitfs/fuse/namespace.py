"""The folders above the kits of ``modelkitfs serve``: a reference, spelled as a path.

``ROOT/registry.example:5000/team/llm:v1`` is the reference ``registry.example:5000/team/llm:v1``
read a component at a time, as the kernel looks paths up. What a name is follows from its
spelling alone, so names that can be no part of a reference (``.git``, ``__pycache__``, a
shell's probes) cost no request: a registry host or a repository component is a folder, a name
with a tag is a symlink to the digest it names now, a name with a digest is a kit. The folders
list only what was loaded under them: nothing here ever asks a registry what exists.
"""

from __future__ import annotations

import enum
import stat
from dataclasses import dataclass, field

from modelkitfs.errors import InvalidReference
from modelkitfs.reference import Reference, is_registry, is_repository_component, parse_reference

ROOT = 1


class Kind(enum.Enum):
    FOLDER = "folder"  # a registry, or a part of a repository
    TAG = "tag"  # a symlink to the kit's digest
    KIT = "kit"  # a kit's own folder: its tree takes over from here


def classify(path: str, name: str) -> tuple[Kind, Reference | None] | None:
    """What ``ROOT/path/name`` is (with its reference, for a tag or a kit), or None when no
    reference has it in that place."""
    full = f"{path}/{name}" if path else name
    if "@" in name or (":" in name and not (not path and is_registry(name))):
        try:
            reference = parse_reference(full)
        except InvalidReference:
            return None
        return (Kind.KIT if reference.digest else Kind.TAG), reference
    if (not path and is_registry(name)) or is_repository_component(name):
        return Kind.FOLDER, None
    return None


@dataclass
class Entry:
    inode: int
    name: str
    path: str  # the reference so far: "registry.example:5000/team"
    kind: Kind
    parent: int
    reference: Reference | None = None
    children: dict[str, int] = field(default_factory=dict)
    target: str = ""  # a tag's: the name of the kit it points at, in the same folder
    resolved_at: float = float("-inf")  # when the tag was last resolved (trio's clock)

    @property
    def mode(self) -> int:
        return stat.S_IFLNK | 0o777 if self.kind is Kind.TAG else stat.S_IFDIR | 0o555


class Namespace:
    """The entries looked up so far, by inode and by path. Kits' entries only hold their place:
    the kernel sees a kit's folder under the kit's own inodes."""

    def __init__(self) -> None:
        root = Entry(ROOT, "", "", Kind.FOLDER, ROOT)
        self.entries: dict[int, Entry] = {ROOT: root}

    def get(self, inode: int) -> Entry | None:
        return self.entries.get(inode)

    def child(self, parent: Entry, name: str) -> Entry | None:
        """The entry ``name`` in folder ``parent``, made on first lookup; None when the name
        can be no part of a reference there."""
        if (inode := parent.children.get(name)) is not None:
            return self.entries[inode]
        classified = classify(parent.path, name)
        if classified is None:
            return None
        kind, reference = classified
        inode = len(self.entries) + 1
        path = f"{parent.path}/{name}" if parent.path else name
        entry = Entry(inode, name, path, kind, parent.inode, reference)
        self.entries[inode] = entry
        parent.children[name] = inode
        return entry
