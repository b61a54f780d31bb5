"""The folders above the kits of ``modelkitfs serve``: a reference, spelled as a path.

``ROOT/registry.example:5000/team/llm:v1`` is the reference ``registry.example:5000/team/llm:v1``
read a component at a time, as the kernel looks paths up. What a name is follows from its
spelling alone, so names that can be no part of a reference (``.git``, ``__pycache__``, a
shell's probes, a digest that is no lowercase sha256) cost no request: a registry host or a
repository component is a folder, a name with a tag is a symlink to the digest it names now, a
name with a digest is a kit. The folders list only what was loaded under them: nothing here
ever asks a registry what exists.

An entry lives while something holds it: the kernel (each lookup it was answered, until it
forgets them) or the service (a kit's name while its kit is served, a name while it is being
looked up). Any name may be asked for, so entries nobody holds go at once, and their inode
numbers are handed out again: memory follows what the kernel keeps, not what was ever asked.
The kernel keeps what it was answered until it needs the memory, so of the names it holds
that hold no kit, only the ``NAMES_KEPT`` looked up last are left to it: the service asks it
to let go of the others (:meth:`Namespace.surplus`).
"""

from __future__ import annotations

import enum
import stat
from collections import OrderedDict
from dataclasses import dataclass, field

from modelkitfs.errors import InvalidReference
from modelkitfs.primitives.digests import is_sha256
from modelkitfs.reference import Reference, is_registry, is_repository_component, parse_reference

ROOT = 1
NAME_MAX = 255  # characters of registry and repository together, as Docker's references allow
NAMES_KEPT = 10_000  # names the kernel holds that hold no kit, at most (beyond: let go)


class Kind(enum.Enum):
    FOLDER = "folder"  # a registry, or a part of a repository
    TAG = "tag"  # a symlink to the kit's digest
    KIT = "kit"  # a kit's own folder: its tree takes over from here


def classify(path: str, name: str) -> tuple[Kind, Reference | None] | None:
    """What ``ROOT/path/name`` is (with its reference, for a tag or a kit), or None when no
    reference has it in that place (a digest must be sha256 in lowercase hex, the only kind
    a kit is named by: any other could only be refused by a registry)."""
    full = f"{path}/{name}" if path else name
    if "@" in name or (":" in name and not (not path and is_registry(name))):
        try:
            reference = parse_reference(full)
        except InvalidReference:
            return None
        if reference.digest is not None and not is_sha256(reference.digest):
            return None
        if len(reference.registry) + 1 + len(reference.repository) > NAME_MAX:
            return None
        return (Kind.KIT if reference.digest else Kind.TAG), reference
    if len(full) > NAME_MAX:
        return None
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
    holds: int = 0  # the kernel's lookups not yet forgotten, and the service's holds
    kits: int = 0  # kits served at or under it
    let_go: bool = False  # the kernel was asked to let go of it

    @property
    def mode(self) -> int:
        return stat.S_IFLNK | 0o777 if self.kind is Kind.TAG else stat.S_IFDIR | 0o555


class Numbers:
    """Numbers handed out and given back: the kernel may be given an inode number again once
    it forgot it, so numbers stay as few as the entries alive."""

    def __init__(self, first: int) -> None:
        self._next = first
        self._free: list[int] = []

    def take(self) -> int:
        if self._free:
            return self._free.pop()
        number, self._next = self._next, self._next + 1
        return number

    def give(self, number: int) -> None:
        self._free.append(number)


class Namespace:
    """The entries held now, by inode and by path. Kits' entries only hold their place: the
    kernel sees a kit's folder under the kit's own inodes."""

    def __init__(self) -> None:
        root = Entry(ROOT, "", "", Kind.FOLDER, ROOT, holds=1)  # the mount holds it
        self.entries: dict[int, Entry] = {ROOT: root}
        self._numbers = Numbers(ROOT + 1)
        # Entries the kernel was answered, the least recently first.
        self._answered: OrderedDict[int, Entry] = OrderedDict()
        self.letting_go = 0  # entries the kernel was asked to let go of and still holds

    def get(self, inode: int) -> Entry | None:
        return self.entries.get(inode)

    def child(self, parent: Entry, name: str) -> Entry | None:
        """The entry ``name`` in folder ``parent``, made on first lookup (it goes again unless
        somebody :meth:`hold` s it); None when the name can be no part of a reference there."""
        if (inode := parent.children.get(name)) is not None:
            return self.entries[inode]
        classified = classify(parent.path, name)
        if classified is None:
            return None
        kind, reference = classified
        inode = self._numbers.take()
        path = f"{parent.path}/{name}" if parent.path else name
        entry = Entry(inode, name, path, kind, parent.inode, reference)
        self.entries[inode] = entry
        parent.children[name] = inode
        return entry

    def hold(self, entry: Entry, count: int = 1) -> None:
        entry.holds += count

    def answered(self, entry: Entry) -> None:
        """The kernel was answered ``entry``: it holds one lookup more of it."""
        entry.holds += 1
        if entry.inode != ROOT:
            self._answered[entry.inode] = entry
            self._answered.move_to_end(entry.inode)

    def surplus(self) -> list[Entry]:
        """The entries for the kernel to let go of: beyond ``NAMES_KEPT``, the least recently
        answered, unless a kit is served under them (it may be bind-mounted)."""
        found = []
        while len(self._answered) > NAMES_KEPT:
            inode, entry = self._answered.popitem(last=False)
            if self.entries.get(inode) is entry and not entry.kits:
                found.append(entry)
                self.letting_go += not entry.let_go
                entry.let_go = True
        return found

    def serve(self, entry: Entry) -> None:
        """A kit is served at ``entry`` (a kit's name): it and its folders stay meanwhile."""
        entry.holds += 1
        for held in self._lineage(entry):
            held.kits += 1

    def unserve(self, entry: Entry) -> None:
        for held in self._lineage(entry):
            held.kits -= 1
        self.release(entry.inode)

    def _lineage(self, entry: Entry) -> list[Entry]:
        """``entry`` and its folders up to the root."""
        found = [entry]
        while found[-1].inode != ROOT:
            found.append(self.entries[found[-1].parent])
        return found

    def release(self, inode: int, count: int = 1) -> None:
        """Let go ``count`` holds of entry ``inode`` (the kernel forgot it, a kit went): an
        entry nobody holds, with no children, goes, and so may its folder."""
        if (entry := self.entries.get(inode)) is not None:
            entry.holds -= count
            self.prune(entry)

    def prune(self, entry: Entry) -> None:
        """Drop ``entry`` if nobody holds it and it has no children, then its folders alike."""
        while (
            entry.inode != ROOT
            and entry.holds <= 0
            and not entry.children
            and self.entries.get(entry.inode) is entry
        ):
            del self.entries[entry.inode]
            self._answered.pop(entry.inode, None)
            self.letting_go -= entry.let_go
            self._numbers.give(entry.inode)
            parent = self.entries[entry.parent]
            parent.children.pop(entry.name, None)
            entry = parent
