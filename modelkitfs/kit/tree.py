"""The merged tree of a ModelKit: what ``kit unpack`` would write, built lazily.

Each layer contributes the entries of its index; layers are applied in the order kit extracts
them, so where two layers carry the same path the result matches an unpacked folder. A layer is
indexed only when a directory it may contribute to is first looked at: a layer whose Kitfile
path is ``P`` can only carry ancestors of ``P``, ``P`` itself and what lies under ``P``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import posixpath
import stat
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import trio

from modelkitfs.archive import NO_READAHEAD, Entry, EntryKind, LayerArchive, LayerIndex, ReadHint
from modelkitfs.errors import ModelKitFSError
from modelkitfs.kit import tensors
from modelkitfs.kit.tensors import TensorLayout
from modelkitfs.primitives.singleflight import WAITED, SingleFlight

log = logging.getLogger(__name__)

ROOT_INODE = 1
IMPLICIT_DIR_MODE = 0o755
KITFILE_MODE = 0o644


NO_CHILDREN: dict[str, int] = MappingProxyType({})  # type: ignore[assignment]


@dataclass
class TreeLayer:
    """A layer in extraction order, with the cleaned path of its Kitfile entry ("" for ".")
    and the directory its members are relative to ("" but for legacy kits)."""

    archive: LayerArchive
    path: str
    kind: str  # the entry's layer type: model, modelpart, dataset, code, docs, prompt, mcpb
    prefix: str = ""
    media_type: str = ""


@dataclass(slots=True)
class Node:
    """A file or directory of the mount. Slotted, and only directories hold a child table: a
    layer may hold a million entries."""

    inode: int
    path: str
    mode: int  # full st_mode, type bits included
    size: int = 0
    layer: TreeLayer | None = None
    offset: int = 0
    content: bytes | None = None
    children: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.children = {} if self.is_dir else NO_CHILDREN

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def _may_hold_tensors(node: Node) -> bool:
    return node.size >= tensors.MIN_FILE and node.path.endswith(tensors.SUFFIX)


def _file_key(node: Node) -> tuple[str, int]:
    """A file's bytes by where they lie: the same in every tree and under any name."""
    assert node.layer is not None
    return node.layer.archive.digest, node.offset


def _hint(
    node: Node, layout: TensorLayout | None = None, offset: int = 0, size: int = 0
) -> ReadHint:
    """What a read of ``size`` bytes at ``offset`` of file ``node`` says of itself to the
    readahead, in the layer's offsets: where the file ends, and where the tensor the read
    enters ends (``layout``: the file's, when it is a safetensors file with one)."""
    tensor_end = layout.entered(offset, size) if layout is not None else None
    unit_end = None if tensor_end is None else node.offset + tensor_end
    return ReadHint(file_end=node.offset + node.size, unit_end=unit_end)


def related(layer_path: str, directory: str) -> bool:
    """Whether a layer whose entry path is ``layer_path`` may hold children of ``directory``."""
    if not layer_path or not directory or layer_path == directory:
        return True
    return layer_path.startswith(directory + "/") or directory.startswith(layer_path + "/")


class KitTree:
    def __init__(self, layers: Sequence[TreeLayer], kitfile: bytes | None) -> None:
        self.layers = list(layers)
        self.kitfile = kitfile
        self._indexes: dict[int, LayerIndex] = {}
        self._merged: set[int] = set()  # layers in the node table
        self._by_path: dict[str, Node] = {}
        self._indexing: SingleFlight[int, None] = SingleFlight()
        self._failures: dict[int, ModelKitFSError] = {}
        self._inodes: dict[str, int] = {"": ROOT_INODE}
        self._next_inode = ROOT_INODE + 1
        self._nodes: dict[int, Node] = {}
        self._layouts: dict[tuple[str, int], TensorLayout | None] = {}
        self._reading_layout: SingleFlight[tuple[str, int], TensorLayout | None] = SingleFlight()
        self._rebuild()

    @property
    def total_size(self) -> int:
        return sum(layer.archive.size for layer in self.layers) + len(self.kitfile or b"")

    @property
    def node_count(self) -> int:
        return len(self._nodes)

    def inodes_of_blob(self, digest: str) -> list[int]:
        """The files whose bytes come from the layer blob ``digest``."""
        return [
            node.inode
            for node in self._nodes.values()
            if node.layer is not None and node.layer.archive.digest == digest and not node.is_dir
        ]

    def node(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def parent(self, node: Node) -> Node:
        return self._nodes[self._inodes[node.path.rpartition("/")[0]]]

    async def lookup(self, parent: int, name: str) -> Node | None:
        """The child ``name`` of directory ``parent``. Only the layers that may hold that very
        path are indexed (opening a known path costs no listing of its siblings)."""
        directory = self._nodes.get(parent)
        if directory is None or not directory.is_dir:
            return None
        await self._index_layers_for(f"{directory.path}/{name}" if directory.path else name)
        return self._child(parent, name)

    def lookup_now(self, parent: int, name: str) -> tuple[bool, Node | None]:
        """What :meth:`lookup` answers, if every layer that may hold the path is indexed (and
        merged): ``(True, node or None)``; else ``(False, None)``: it must wait."""
        directory = self._nodes.get(parent)
        if directory is None or not directory.is_dir:
            return True, None
        path = f"{directory.path}/{name}" if directory.path else name
        if len(self._merged) < len(self._indexes) or any(
            i not in self._indexes and related(layer.path, path)
            for i, layer in enumerate(self.layers)
        ):
            return False, None
        return True, self._child(parent, name)

    def _child(self, parent: int, name: str) -> Node | None:
        directory = self._nodes.get(parent)
        inode = directory.children.get(name) if directory else None
        return self._nodes.get(inode) if inode else None

    async def listing(self, inode: int) -> Node | None:
        """The directory ``inode`` with every child it has, indexing layers as needed."""
        node = self._nodes.get(inode)
        if node is None or not node.is_dir:
            return node
        await self._index_layers_for(node.path)
        return self._nodes.get(inode)

    async def aclose(self) -> None:
        for layer in self.layers:
            await layer.archive.aclose()

    def read_now(self, node: Node, offset: int, size: int) -> bytes | None:
        """What :meth:`read` answers, if it can be had without waiting; else None."""
        if node.content is not None or node.layer is None or offset >= node.size:
            return None
        size = min(size, node.size - offset)
        archive, start = node.layer.archive, node.offset + offset
        if not _may_hold_tensors(node):
            return archive.read_now(start, size, _hint(node))
        key = _file_key(node)
        if offset == 0 or key not in self._layouts:  # its layout is learnt first
            return None
        return archive.read_now(start, size, _hint(node, self._layouts[key], offset, size))

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        if node.content is not None:
            return node.content[offset : offset + size]
        if node.layer is None or offset >= node.size:
            return b""
        size = min(size, node.size - offset)
        archive, start = node.layer.archive, node.offset + offset
        if not _may_hold_tensors(node):
            return await archive.read(start, size, _hint(node))
        key = _file_key(node)
        if offset == 0:  # the loader reads the header first: learn the layout from it
            data = await archive.read(start, size, _hint(node))
            if key not in self._layouts:
                self._layouts[key] = await self._read_layout(node, data)
            return data
        if key in self._layouts:
            layout = self._layouts[key]
        else:
            layout = await self._reading_layout.run(key, self._learn_layout, key, node)
        return await archive.read(start, size, _hint(node, layout, offset, size))

    async def _learn_layout(self, key: tuple[str, int], node: Node) -> TensorLayout | None:
        if key not in self._layouts:  # a header read at offset 0 may have brought it meanwhile
            self._layouts[key] = await self._read_layout(node)
        return self._layouts[key]

    async def _read_layout(self, node: Node, first: bytes = b"") -> TensorLayout | None:
        """Where the tensors of safetensors file ``node`` lie, from its header; ``first``: its
        first bytes, when a read of them brought them (a reader reads the header first). None
        when the header cannot be read or is no safetensors header: reads go on without."""
        assert node.layer is not None
        archive = node.layer.archive

        async def head(length: int) -> bytes:
            if len(first) >= length:
                return first[:length]
            return await archive.read(node.offset, length, NO_READAHEAD)

        try:
            length = tensors.header_length(await head(8))
            if length is None or 8 + length > node.size:
                return None
            header = (await head(8 + length))[8:]
            if length <= tensors.PARSE_ON_LOOP:
                return tensors.parse_layout(header, node.size)
            return await trio.to_thread.run_sync(tensors.parse_layout, header, node.size)
        except Exception as exc:  # its reader finds out what is wrong with the file itself
            log.debug("no tensor layout for %s: %r", node.path, exc)
            return None

    def block_around(self, node: Node, offset: int) -> tuple[int, int] | None:
        """The part of file ``node`` that the cache block holding its byte ``offset`` holds,
        as offsets in the file; None where bytes are not cached by blocks (a compressed layer,
        the Kitfile)."""
        if node.layer is None or node.content is not None or offset >= node.size:
            return None
        block = node.layer.archive.block_around(node.offset + offset)
        if block is None:
            return None
        return max(block[0] - node.offset, 0), min(block[1] - node.offset, node.size)

    async def read_held(self, node: Node, offset: int, size: int) -> bytes | None:
        """Bytes of file ``node`` that need nothing fetched (see the blob store's
        ``read_held``); else None. No reader is noted: nothing is fetched ahead for it."""
        if node.layer is None or node.content is not None or offset >= node.size:
            return None
        size = min(size, node.size - offset)
        return await node.layer.archive.read_held(node.offset + offset, size)

    async def cached_bytes(self, node: Node) -> int | None:
        """How many bytes of the file ``node`` are in the cache; None when not known per file
        (a compressed layer)."""
        if node.layer is None or node.is_dir:
            return node.size
        return await node.layer.archive.cached_bytes(node.offset, node.size)

    async def _index_layers_for(self, directory: str) -> None:
        wanted = [
            i
            for i, layer in enumerate(self.layers)
            if i not in self._indexes and related(layer.path, directory)
        ]
        if wanted:
            async with trio.open_nursery() as nursery:
                for i in wanted:
                    nursery.start_soon(self._index_layer, i)
        if len(self._merged) < len(self._indexes):  # all those indexed meanwhile, at once
            self._merge()
        for i in wanted:
            if i in self._failures:
                raise self._failures[i]

    async def _index_layer(self, i: int) -> None:
        """Index layer ``i``, or wait for the indexing under way; when that one fails, try
        once more (it may have started before a fault cleared)."""
        for _ in range(2):
            if i in self._indexes:
                return
            if await self._indexing.run_or_wait(i, self._build_index, i) is not WAITED:
                return

    async def _build_index(self, i: int) -> None:
        """Index layer ``i``; a failure is kept in ``_failures`` for its readers to raise."""
        try:
            self._indexes[i] = await self.layers[i].archive.index()
            self._failures.pop(i, None)
        except ModelKitFSError as exc:
            log.error("%s", exc)
            self._failures[i] = exc

    def _merge(self) -> None:
        """Bring the layers indexed since into the node table: laid over it when they all
        come after its layers in extraction order (a later layer overwrites an earlier one,
        as ``kit unpack`` does, so a rebuild would make the same table, going over every
        entry again: a million for a small layer after a large one), else rebuilt."""
        new = sorted(set(self._indexes) - self._merged)
        if self._merged and new[0] < max(self._merged):
            self._rebuild()
            return
        changed: dict[str, Node] = {}
        nodes = collections.ChainMap(changed, self._by_path)  # writes go to ``changed``
        for i in new:
            for entry in self._indexes[i].entries:
                self._apply(nodes, self.layers[i], entry)
        self._by_path.update(changed)
        self._link(changed)
        self._merged.update(new)

    def _rebuild(self) -> None:
        """Merge the indexed layers, in extraction order, into the node table. Inodes stay
        stable across rebuilds because they are keyed by path."""
        nodes: dict[str, Node] = {"": Node(ROOT_INODE, "", stat.S_IFDIR | IMPLICIT_DIR_MODE)}
        if self.kitfile is not None:
            nodes["Kitfile"] = Node(
                self._inode("Kitfile"),
                "Kitfile",
                stat.S_IFREG | KITFILE_MODE,
                len(self.kitfile),
                content=self.kitfile,
            )
        for i, layer in enumerate(self.layers):
            if (index := self._indexes.get(i)) is not None:
                for entry in index.entries:
                    self._apply(nodes, layer, entry)
        self._by_path, self._nodes, self._merged = nodes, {}, set(self._indexes)
        self._link(nodes)

    def _link(self, nodes: dict[str, Node]) -> None:
        """Number ``nodes`` (new, or in place of those at their paths) in the node table and
        name them in their parents."""
        by_path = self._by_path
        for path, node in nodes.items():
            self._nodes[node.inode] = node
            if path:
                parent, _, name = path.rpartition("/")
                by_path[parent].children[name] = node.inode

    def _apply(self, nodes: MutableMapping[str, Node], layer: TreeLayer, entry: Entry) -> None:
        if layer.prefix:
            path = posixpath.join(layer.prefix, entry.path) if entry.path else layer.prefix
            entry = dataclasses.replace(entry, path=path)
        if not entry.path:
            return  # the root itself: its mode stays the mount's
        if not self._make_parents(nodes, entry.path):
            log.warning(
                "%s: skipping %r: a file stands where its directory should be",
                layer.archive.digest,
                entry.path,
            )
            return
        existing = nodes.get(entry.path)
        if entry.kind is EntryKind.DIRECTORY:
            if existing is not None and existing.is_dir:
                return  # an existing directory keeps its mode, as os.MkdirAll leaves it
            nodes[entry.path] = Node(
                self._inode(entry.path), entry.path, stat.S_IFDIR | entry.mode, layer=layer
            )
        elif entry.kind is EntryKind.FILE:
            if existing is not None and existing.is_dir:
                log.warning(
                    "%s: file %r shadows a directory; keeping the directory",
                    layer.archive.digest,
                    entry.path,
                )
                return
            nodes[entry.path] = Node(
                self._inode(entry.path),
                entry.path,
                stat.S_IFREG | entry.mode,
                entry.size,
                offset=entry.offset,
                layer=layer,
            )
        else:
            log.info(
                "%s: skipping %s %r (kit writes neither)",
                layer.archive.digest,
                entry.kind.value,
                entry.path,
            )

    def _make_parents(self, nodes: MutableMapping[str, Node], path: str) -> bool:
        parent = path.rpartition("/")[0]
        missing: list[str] = []
        while parent and parent not in nodes:
            missing.append(parent)
            parent = parent.rpartition("/")[0]
        if parent and not nodes[parent].is_dir:
            return False
        for directory in reversed(missing):
            nodes[directory] = Node(
                self._inode(directory), directory, stat.S_IFDIR | IMPLICIT_DIR_MODE
            )
        return True

    def _inode(self, path: str) -> int:
        inode = self._inodes.get(path)
        if inode is None:
            inode = self._inodes[path] = self._next_inode
            self._next_inode += 1
        return inode

    @property
    def inode_numbers(self) -> dict[str, int]:
        """The number of each path numbered so far. Paths are numbered as they are found
        (layers are indexed lazily), so the same kit built again numbers them otherwise,
        unless it adopts these (:meth:`adopt_inodes`)."""
        return dict(self._inodes)

    async def adopt_inodes(self, numbers: dict[str, int]) -> None:
        """Number paths as an earlier tree of the same kit did, and index the layers that
        hold them, so that inodes the kernel still holds name the same files at once
        (``serve`` drops idle kits' trees and builds them again on demand). Raises ValueError
        when the trees disagree on a number."""
        if any(numbers.get(path, inode) != inode for path, inode in self._inodes.items()):
            raise ValueError("the inode numbers belong to another tree")
        self._inodes = {**numbers, **self._inodes}
        self._next_inode = max(self._next_inode, max(self._inodes.values()) + 1)
        for path in numbers:
            await self._index_layers_for(path)  # each layer once; indexes are on disk
