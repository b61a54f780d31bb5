"""One FUSE mount for every kit: ``modelkitfs serve ROOT``, where any reference is a folder.

The namespace (:mod:`modelkitfs.fuse.namespace`) answers for the folders above the kits; each
loaded kit is a :class:`~modelkitfs.fuse.operations.KitOperations` of its own whose inodes the
kernel sees shifted into a slot (``slot << 32``), so a request finds its kit from its inode
alone. A kit is loaded on the first lookup of its folder, once however many ask at the same
moment; a tag is resolved at most once per ``tag_ttl``; a reference the registry does not know
is remembered as such for ``negative_ttl``. A kit nobody used for ``idle`` is let go: the
tree and indexes go (the disk cache keeps its blocks) but its slot and the numbers of the paths
the kernel saw stay: a request for one of them (a bind mount of the kit's folder, a shell's
working directory) builds the tree again under the same numbers. A kit with a file open stays.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cachetools
import pyfuse3
import trio

from modelkitfs.deadline import within
from modelkitfs.errors import AuthenticationError, ModelKitFSError, NotAModelKit, NotFound
from modelkitfs.fuse.namespace import ROOT, Entry, Kind, Namespace
from modelkitfs.fuse.operations import FOREVER, STATS_XATTR, KitOperations
from modelkitfs.kit.tree import ROOT_INODE, KitTree
from modelkitfs.reference import Reference
from modelkitfs.singleflight import SingleFlight

log = logging.getLogger(__name__)

SLOT_BITS = 32
NEGATIVE_ENTRIES = 10_000  # references remembered as unknown, at most


class KitLoader(Protocol):
    """Where the service gets kits from (the daemon's sources: registries, kit's storage)."""

    async def resolve(self, reference: Reference) -> str:
        """The digest ``reference``'s tag names now."""

    async def load(self, reference: Reference) -> tuple[KitTree, Callable[[], dict[str, Any]]]:
        """The kit ``reference`` (pinned by digest) names: its tree and its statistics."""


@dataclass
class _Kit:
    slot: int
    entry: Entry  # its place in the namespace
    operations: KitOperations | None  # None while unloaded
    last_used: float
    numbers: dict[str, int] = field(default_factory=dict)  # the tree's inodes, once unloaded

    @property
    def base(self) -> int:
        return self.slot << SLOT_BITS

    @property
    def root(self) -> int:
        return self.base + ROOT_INODE


class ServiceOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        loader: KitLoader,
        stats: Callable[[], dict[str, Any]] = dict,
        *,
        timeout: float,
        tag_ttl: float = 60.0,
        negative_ttl: float = 30.0,
        idle: float = 600.0,
    ) -> None:
        super().__init__()
        self.loader = loader
        self.stats = stats  # the service's own, at the root (user.modelkitfs.stats)
        self.timeout, self.tag_ttl, self.negative_ttl, self.idle = (
            timeout,
            tag_ttl,
            negative_ttl,
            idle,
        )
        self.namespace = Namespace()
        self.kits: dict[int, _Kit] = {}  # by slot
        self._slots: dict[int, int] = {}  # namespace inode of a kit's entry -> its slot
        self._next_slot = 1
        self._loading: SingleFlight[str, _Kit] = SingleFlight()
        self._reloading: SingleFlight[int, None] = SingleFlight()
        self._resolving: SingleFlight[str, None] = SingleFlight()
        self._unknown: cachetools.TTLCache[str, int] = cachetools.TTLCache(
            NEGATIVE_ENTRIES, negative_ttl, timer=trio.current_time
        )
        self._folders: dict[int, list[tuple[bytes, int]]] = {}  # namespace listings by fh
        self._kit_dirs: dict[int, tuple[KitOperations, int]] = {}  # kits' listings by fh
        self._next_fh = 1
        self.uid, self.gid = os.getuid(), os.getgid()

    # --- routing --------------------------------------------------------------------------------

    async def _kit(self, inode: int) -> KitOperations:
        """The operations of the kit ``inode`` belongs to, its tree built again if it was
        unloaded."""
        kit = self.kits.get(inode >> SLOT_BITS)
        if kit is None:
            raise pyfuse3.FUSEError(errno.ESTALE)  # no kit ever had this slot
        kit.last_used = trio.current_time()
        if kit.operations is None:
            await self._reloading.run(kit.slot, self._reload, kit)
        assert kit.operations is not None
        return kit.operations

    def _entry(self, inode: int) -> Entry:
        entry = self.namespace.get(inode)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry

    async def invalidate_blob(self, digest: str) -> None:
        for kit in list(self.kits.values()):
            if kit.operations is not None:
                await kit.operations.invalidate_blob(digest)

    # --- lookups --------------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        if slot := parent_inode >> SLOT_BITS:
            operations = await self._kit(parent_inode)
            if parent_inode == self.kits[slot].root and name == b"..":
                return self._attributes(self._entry(self.kits[slot].entry.parent))
            return await operations.lookup(parent_inode, name, ctx)
        parent = self._entry(parent_inode)
        if name == b".":
            return self._attributes(parent)
        if name == b"..":
            return self._attributes(self._entry(parent.parent))
        entry = self.namespace.child(parent, os.fsdecode(name))
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if entry.kind is Kind.TAG:
            await self._resolved(entry)
        elif entry.kind is Kind.KIT:
            kit = await self._loaded(entry)
            return await (await self._kit(kit.root)).getattr(kit.root)
        return self._attributes(entry)

    async def _resolved(self, entry: Entry) -> None:
        """Point the tag at the digest it names, asking the registry at most once a TTL."""
        if trio.current_time() - entry.resolved_at < self.tag_ttl:
            return
        await self._resolving.run(entry.path, self._resolve, entry)

    async def _resolve(self, entry: Entry) -> None:
        assert entry.reference is not None
        digest = await self._guarded(entry.path, self.loader.resolve, entry.reference)
        target = f"{entry.name.rpartition(':')[0]}@{digest}"
        if entry.target and target != entry.target:
            log.info("%s moved to %s", entry.path, digest)
        entry.target, entry.resolved_at = target, trio.current_time()

    async def _loaded(self, entry: Entry) -> _Kit:
        if (slot := self._slots.get(entry.inode)) is not None:
            kit = self.kits[slot]
            kit.last_used = trio.current_time()
            return kit
        return await self._loading.run(entry.path, self._load, entry)

    async def _load(self, entry: Entry) -> _Kit:
        assert entry.reference is not None
        tree, stats = await self._guarded(entry.path, self.loader.load, entry.reference)
        slot, self._next_slot = self._next_slot, self._next_slot + 1
        operations = KitOperations(tree, stats, timeout=self.timeout, inode_base=slot << SLOT_BITS)
        kit = self.kits[slot] = _Kit(slot, entry, operations, trio.current_time())
        self._slots[entry.inode] = slot
        log.info("loaded %s", entry.path)
        return kit

    async def _reload(self, kit: _Kit) -> None:
        """Build an unloaded kit's tree again, numbering its paths as before."""
        if kit.operations is not None:
            return
        assert kit.entry.reference is not None
        tree, stats = await self._guarded(kit.entry.path, self.loader.load, kit.entry.reference)
        try:
            await tree.adopt_inodes(kit.numbers)
        except ValueError:
            log.error("%s changed while unloaded: what was open of it is stale", kit.entry.path)
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        kit.operations = KitOperations(tree, stats, timeout=self.timeout, inode_base=kit.base)
        kit.numbers = {}
        log.info("loaded %s again", kit.entry.path)

    async def _guarded(self, path: str, function: Callable[..., Any], *args: Any) -> Any:
        """Ask the loader within the deadline; a failure becomes the errno a user expects
        (unknown: ENOENT, refused: EACCES, else EIO), logged once and, for an unknown
        reference, remembered for the negative TTL."""
        if (known := self._unknown.get(path)) is not None:
            raise pyfuse3.FUSEError(known)
        try:
            return await within(self.timeout, f"loading {path}", function, *args)
        except (NotFound, NotAModelKit) as exc:
            log.warning("%s: %s", path, exc)
            self._unknown[path] = errno.ENOENT
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except AuthenticationError as exc:
            log.error("%s: %s", path, exc)
            raise pyfuse3.FUSEError(errno.EACCES) from None
        except ModelKitFSError as exc:
            log.error("%s: %s", path, exc)
        except Exception:
            log.exception("loading %s failed unexpectedly", path)
        raise pyfuse3.FUSEError(errno.EIO)

    def _attributes(self, entry: Entry) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = entry.inode
        attrs.st_mode = entry.mode
        attrs.st_nlink = 1 if entry.kind is Kind.TAG else 2
        attrs.st_uid, attrs.st_gid = self.uid, self.gid
        attrs.st_size = len(entry.target)
        # A tag is looked up again once its TTL is over; a folder never changes.
        attrs.entry_timeout = attrs.attr_timeout = (
            self.tag_ttl if entry.kind is Kind.TAG else FOREVER
        )
        return attrs

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode >> SLOT_BITS:
            return await (await self._kit(inode)).getattr(inode, ctx)
        return self._attributes(self._entry(inode))

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        entry = self._entry(inode)
        if entry.kind is not Kind.TAG:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(entry.target)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        pass  # a kit's inodes keep their numbers for as long as the service runs

    # --- folders ----------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: Any) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        if inode >> SLOT_BITS:
            operations = await self._kit(inode)
            self._kit_dirs[fh] = (operations, await operations.opendir(inode, ctx))
            return fh
        entry = self._entry(inode)
        if entry.kind is not Kind.FOLDER:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        self._folders[fh] = sorted(
            (os.fsencode(name), child)
            for name, child in entry.children.items()
            if self._holds_something(self.namespace.entries[child])
        )
        return fh

    def _holds_something(self, entry: Entry) -> bool:
        """Whether a kit is loaded (or a tag resolved) at or under ``entry``: folders list only
        those, never every name somebody once looked up."""
        if entry.kind is Kind.KIT:
            return entry.inode in self._slots
        if entry.kind is Kind.TAG:
            return bool(entry.target)
        return any(
            self._holds_something(self.namespace.entries[c]) for c in entry.children.values()
        )

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if (kit_dir := self._kit_dirs.get(fh)) is not None:
            await kit_dir[0].readdir(kit_dir[1], start_id, token)
            return
        listing = self._folders.get(fh, [])
        for position in range(start_id, len(listing)):
            name, inode = listing[position]
            entry = self.namespace.entries[inode]
            kit = self.kits.get(self._slots.get(inode, 0))
            if kit is not None:
                attributes = await (await self._kit(kit.root)).getattr(kit.root)
            else:
                attributes = self._attributes(entry)
            if not pyfuse3.readdir_reply(token, name, attributes, position + 1):
                break

    async def releasedir(self, fh: int) -> None:
        if (kit_dir := self._kit_dirs.pop(fh, None)) is not None:
            await kit_dir[0].releasedir(kit_dir[1])
        self._folders.pop(fh, None)

    # --- files: a kit's own ---------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if not inode >> SLOT_BITS:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return await (await self._kit(inode)).open(inode, flags, ctx)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await (await self._kit(fh)).read(fh, off, size)  # a file's fh is its inode

    async def release(self, fh: int) -> None:
        kit = self.kits.get(fh >> SLOT_BITS)
        if kit is not None and kit.operations is not None:  # a kit with a file open stays
            await kit.operations.release(fh)

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return not mode & os.W_OK

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if not inode >> SLOT_BITS:
            return [STATS_XATTR] if inode == ROOT else []
        return await (await self._kit(inode)).listxattr(inode, ctx)

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if not inode >> SLOT_BITS:
            if inode == ROOT and name == STATS_XATTR:
                return json.dumps(self.stats(), sort_keys=True).encode()
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return await (await self._kit(inode)).getxattr(inode, name, ctx)

    # --- letting kits go ------------------------------------------------------------------------

    async def unload_idle(self) -> None:
        """Forever: unload kits idle for ``idle``."""
        while True:
            await trio.sleep(max(self.idle / 4, 0.05))
            await self.sweep()

    async def sweep(self) -> None:
        """Unload each kit idle for ``idle`` with nothing of it open (a mapped file is open
        until unmapped): its tree goes, the numbers of its paths stay."""
        now = trio.current_time()
        for kit in list(self.kits.values()):
            operations = kit.operations
            if operations is None or operations.open_handles or now - kit.last_used < self.idle:
                continue
            kit.numbers, kit.operations = operations.tree.inode_numbers, None
            await operations.tree.aclose()
            log.info("unloaded %s (idle for %.0f s)", kit.entry.path, now - kit.last_used)

    async def aclose(self) -> None:
        for kit in self.kits.values():
            if kit.operations is not None:
                await kit.operations.tree.aclose()
        self.kits.clear()
