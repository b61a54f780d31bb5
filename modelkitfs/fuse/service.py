"""One FUSE mount for every kit: ``modelkitfs serve ROOT``, where any reference is a folder.

The namespace (:mod:`modelkitfs.fuse.namespace`) answers for the folders above the kits. Each
name of a kit the kernel holds has a slot: a
:class:`~modelkitfs.fuse.operations.KitOperations` of its own whose inodes the kernel sees
shifted into it (``slot << 32``), so a request finds its kit from its inode alone; the tree
under it is loaded once per manifest, however many names reach it
(:mod:`modelkitfs.fuse.loads`). A tree nobody used for ``idle`` is let go (the disk cache
keeps its blocks) but the slots and the numbers of the paths the kernel saw stay: a request for
one of them (a bind mount of the kit's folder, a shell's working directory) builds the tree
again under the same numbers. A kit with a file open stays.

Memory follows what the kernel holds: every lookup it is answered is counted, every ``forget``
counted off, and a name or a slot the kernel no longer holds goes. The kernel keeps what it was
answered until it needs the memory, so the service asks it to let go of what it need not keep:
the names that hold no kit beyond the last ``NAMES_KEPT`` looked up, and the names of a kit
unloaded for being idle (a name in use, a bind mount's, stays).
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio

from modelkitfs.fuse.guard import guarded
from modelkitfs.fuse.loads import KitLoader, Loaded, Loads
from modelkitfs.fuse.namespace import NAMES_KEPT, ROOT, Entry, Kind, Namespace
from modelkitfs.fuse.operations import FOREVER, STATS_XATTR, KitOperations, Listed, reply
from modelkitfs.fuse.pushes import Pushes
from modelkitfs.kit.tree import ROOT_INODE

log = logging.getLogger(__name__)

SLOT_BITS = 32
PACE = 0.1  # seconds a new name may wait for the kernel to let go of others


async def no_stats() -> dict[str, Any]:
    return {}


def let_go(parent: int, name: str) -> None:
    """Ask the kernel to drop its entry ``name`` of folder ``parent``: it forgets it, unless it
    is in use (from a thread of pyfuse3's: a handler may be waiting on the folder)."""
    pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)


@dataclass
class _Kit:
    """A name of a kit that the kernel holds: its slot of inodes."""

    slot: int
    entry: Entry  # the name, in the namespace
    loaded: Loaded  # the kit, shared with its other names
    operations: KitOperations | None = None  # None while the tree is unloaded
    known: int = 0  # the kernel's lookups of the slot's inodes, not yet forgotten
    attributes: pyfuse3.EntryAttributes | None = None  # its root's, for listings

    @property
    def base(self) -> int:
        return self.slot << SLOT_BITS

    @property
    def root(self) -> int:
        return self.base + ROOT_INODE


@guarded
class ServiceOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        loader: KitLoader,
        stats: Callable[[], Awaitable[dict[str, Any]]] = no_stats,
        *,
        timeout: float,
        tag_ttl: float = 60.0,
        negative_ttl: float = 30.0,
        idle: float = 600.0,
    ) -> None:
        super().__init__()
        self.stats = stats  # the service's own, at the root (user.modelkitfs.stats)
        self.let_go: Callable[[int, str], None] = let_go
        self.timeout, self.tag_ttl, self.idle = timeout, tag_ttl, idle
        self.loads = Loads(loader, timeout=timeout, negative_ttl=negative_ttl)
        self.namespace = Namespace()
        self.kits: dict[int, _Kit] = {}  # by slot
        self._slots: dict[int, int] = {}  # namespace inode of a kit's name -> its slot
        # Never given out again: a push into the page cache, or an invalidation, queued for
        # a kit's inode must never land on another kit's file that took its number (2**32
        # slots: a kit loaded a second for a century).
        self._slot_numbers = itertools.count(1)
        self._folders: dict[int, tuple[Entry, list[tuple[bytes, Entry]]]] = {}  # listings by fh
        self._kit_dirs: dict[int, tuple[_Kit, KitOperations, int]] = {}  # kits' listings by fh
        self._next_fh = 1
        self._behind = trio.lowlevel.ParkingLot()  # names waiting for the kernel to let go
        self.uid, self.gid = os.getuid(), os.getgid()
        self.pushes = Pushes()  # every kit's, into the kernel's page cache: run while serving

    @property
    def kit_names(self) -> list[str]:
        """The names of kits the kernel holds."""
        return sorted(kit.entry.path for kit in self.kits.values())

    # --- routing --------------------------------------------------------------------------------

    async def _kit(self, inode: int) -> KitOperations:
        """The operations of the kit ``inode`` belongs to, its tree built again if it was
        unloaded (within the timeout)."""
        kit = self.kits.get(inode >> SLOT_BITS)
        if kit is None:
            raise pyfuse3.FUSEError(errno.ESTALE)  # no kit has this slot (now)
        if kit.operations is None:
            await self.loads.kit(kit.entry.path, kit.loaded.reference)
        return self._operations(kit)

    def _operations(self, kit: _Kit) -> KitOperations:
        """``kit``'s operations over its loaded tree (made now if unloaded since)."""
        kit.loaded.last_used = trio.current_time()
        if kit.operations is None:
            if kit.loaded.tree is None:
                raise pyfuse3.FUSEError(errno.EAGAIN)  # unloaded again at once: ask again
            kit.operations = KitOperations(
                kit.loaded.tree,
                kit.loaded.stats,
                timeout=self.timeout,
                inode_base=kit.base,
                name=kit.entry.path,
                pushes=self.pushes,
            )
            kit.attributes = kit.operations.attributes(kit.root)
        return kit.operations

    def _entry(self, inode: int) -> Entry:
        entry = self.namespace.get(inode)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry

    def subject(self, handler: str, args: tuple[Any, ...]) -> str:
        first = args[0] if args and isinstance(args[0], int) else 0
        if handler in ("readdir", "releasedir"):  # by handle
            held = self._kit_dirs.get(first)
            return held[0].entry.path if held else "a folder of the root"
        kit = self.kits.get(first >> SLOT_BITS)
        entry = kit.entry if kit else self.namespace.get(first)
        return entry.path if entry and entry.path else "the root"

    async def invalidate_blob(self, digest: str) -> None:
        for kit in list(self.kits.values()):
            if kit.operations is not None:
                await kit.operations.invalidate_blob(digest)

    # --- lookups and what the kernel holds ----------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        if parent_inode >> SLOT_BITS:
            attributes = await self._lookup_in_kit(parent_inode, name, ctx)
        elif name in (b".", b".."):
            parent = self._entry(parent_inode)
            attributes = self._attributes(parent if name == b"." else self._entry(parent.parent))
        else:
            if self.namespace.letting_go > NAMES_KEPT:
                await self._keep_pace()
            entry = self.namespace.child(self._entry(parent_inode), os.fsdecode(name))
            if entry is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            self.namespace.hold(entry)  # while it is looked up
            try:
                attributes = await self._enter(entry)
                self._looked_up(attributes.st_ino)
            finally:
                self.namespace.release(entry.inode)
            return attributes
        self._looked_up(attributes.st_ino)
        return attributes

    async def _lookup_in_kit(
        self, parent_inode: int, name: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        operations = await self._kit(parent_inode)
        kit = self.kits[parent_inode >> SLOT_BITS]
        if parent_inode == kit.root and name == b"..":
            return self._attributes(self._entry(kit.entry.parent))
        return await operations.lookup(parent_inode, name, ctx)

    async def _enter(self, entry: Entry) -> pyfuse3.EntryAttributes:
        """The attributes of namespace entry ``entry``: a tag resolved, a kit loaded."""
        if entry.kind is Kind.TAG:
            await self._resolved(entry)
        elif entry.kind is Kind.KIT:
            assert entry.reference is not None
            slot = self._slots.get(entry.inode)
            if slot is None or self.kits[slot].operations is None:
                loaded = await self.loads.kit(entry.path, entry.reference)
                if loaded.tree is None:
                    raise pyfuse3.FUSEError(errno.EAGAIN)  # unloaded again at once: ask again
                slot = self._slots.get(entry.inode)  # made meanwhile by another lookup?
                if slot is None:
                    slot = next(self._slot_numbers)
                    self.kits[slot] = _Kit(slot, entry, loaded)
                    self._slots[entry.inode] = slot
                    loaded.users.add(slot)
                    self.namespace.serve(entry)  # a kit's name stays while its slot does
            kit = self.kits[slot]
            return self._operations(kit).attributes(kit.root)
        return self._attributes(entry)

    def _looked_up(self, inode: int) -> None:
        """The kernel was answered ``inode``: it holds one lookup more of it."""
        if slot := inode >> SLOT_BITS:
            self.kits[slot].known += 1
            return
        self.namespace.answered(self._entry(inode))
        for entry in self.namespace.surplus():
            self.let_go(entry.parent, entry.name)

    async def _keep_pace(self) -> None:
        """Wait (a little) for the kernel to let go of what it was asked to: it does so in a
        thread of its own, which a flood of new names would leave behind (and their entries
        held meanwhile). The wait is bounded: forgets come in on other workers, or not."""
        with trio.move_on_after(PACE):
            await self._behind.park()

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            if not inode >> SLOT_BITS:
                self.namespace.release(inode, count)
            elif (kit := self.kits.get(inode >> SLOT_BITS)) is not None:
                kit.known -= count
                if kit.known <= 0:
                    self._drop(kit)
        if self.namespace.letting_go <= NAMES_KEPT:
            self._behind.unpark_all()

    def _drop(self, kit: _Kit) -> None:
        """The kernel holds nothing of ``kit``'s slot: the slot and its name go (the tree, if
        no other name uses it, when idle)."""
        del self.kits[kit.slot], self._slots[kit.entry.inode]
        kit.loaded.users.discard(kit.slot)
        self.namespace.unserve(kit.entry)

    async def _resolved(self, entry: Entry) -> None:
        """Point the tag at the digest it names, asking the registry at most once a TTL."""
        now = trio.current_time()
        if now - entry.resolved_at < self.tag_ttl:
            return
        assert entry.reference is not None
        digest = await self.loads.resolve(entry.path, entry.reference)
        entry.target = f"{entry.name.rpartition(':')[0]}@{digest}"
        entry.resolved_at = now

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

    # --- folders ----------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: Any) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        if inode >> SLOT_BITS:
            operations = await self._kit(inode)
            kit = self.kits[inode >> SLOT_BITS]
            self._kit_dirs[fh] = (kit, operations, await operations.opendir(inode, ctx))
            return fh
        entry = self._entry(inode)
        if entry.kind is not Kind.FOLDER:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        # Folders list what is served under them (and tags resolved), never every name
        # somebody once looked up.
        children = [self.namespace.entries[c] for c in entry.children.values()]
        self._folders[fh] = (
            entry,
            sorted((os.fsencode(c.name), c) for c in children if c.kits or c.target),
        )
        return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if (kit_dir := self._kit_dirs.get(fh)) is not None:
            kit, operations, kit_fh = kit_dir
            kit.known += len(reply(token, operations.listed(kit_fh, start_id)))
            return
        for inode in reply(token, self._listed(fh, start_id)):
            self._looked_up(inode)

    def _listed(self, fh: int, start_id: int) -> Iterator[Listed]:
        """The entries of namespace folder ``fh`` still there, from ``start_id`` on."""
        listing = self._folders[fh][1] if fh in self._folders else []
        for position in range(start_id, len(listing)):
            name, entry = listing[position]
            if self.namespace.get(entry.inode) is not entry:
                continue  # gone since the folder was opened
            slot = self._slots.get(entry.inode)
            attributes = self._attributes(entry) if slot is None else self.kits[slot].attributes
            if attributes is not None:
                yield name, attributes, position + 1

    async def releasedir(self, fh: int) -> None:
        if (kit_dir := self._kit_dirs.pop(fh, None)) is not None:
            await kit_dir[1].releasedir(kit_dir[2])
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
                return json.dumps(await self.stats(), sort_keys=True).encode()
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
        until unmapped): its tree goes, the numbers of its paths stay while a name of it is
        held; a kit no name holds goes altogether."""
        now = trio.current_time()
        for key, loaded in list(self.loads.kits.items()):
            users = [self.kits[slot] for slot in loaded.users]
            tree = loaded.tree
            if tree is not None:
                if now - loaded.last_used < self.idle or any(
                    kit.operations is not None and kit.operations.open_handles for kit in users
                ):
                    continue
                loaded.numbers, loaded.tree = (tree.inode_numbers if users else {}), None
                for kit in users:
                    kit.operations = None
                    self.let_go(kit.entry.parent, kit.entry.name)
                await tree.aclose()
                log.info("unloaded %s (idle for %.0f s)", loaded.reference, now - loaded.last_used)
            if not loaded.users and loaded.tree is None and self.loads.kits.get(key) is loaded:
                del self.loads.kits[key]

    async def aclose(self) -> None:
        await self.loads.aclose()
        self.kits.clear()
