"""pyfuse3 request handlers over a :class:`~modelkitfs.kit.tree.KitTree`.

Content under a digest never changes, so entries and attributes are cached by the kernel for a
very long time and pages are kept across opens: a re-read never reaches this process. Every
handler answers with an errno whatever fails (:mod:`modelkitfs.fuse.guard`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

import pyfuse3
import trio

from modelkitfs.errors import ModelKitFSError
from modelkitfs.fuse.guard import guarded
from modelkitfs.fuse.pushes import SMALL_READ, Pushes
from modelkitfs.kit.tree import ROOT_INODE, KitTree, Node
from modelkitfs.primitives.deadline import within

log = logging.getLogger(__name__)

FOREVER = float(2**31)
BLOCK_SIZE = 4096
PAGE = 4096  # the kernel's page
XATTR = b"user.modelkitfs."
STATS_XATTR = XATTR + b"stats"
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT

assert ROOT_INODE == pyfuse3.ROOT_INODE

T = TypeVar("T")
Listed = tuple[bytes, pyfuse3.EntryAttributes, int]  # a folder's entry: name, attributes, next id


def reply(token: Any, entries: Iterable[Listed]) -> list[int]:
    """Hand ``entries`` to the kernel until its buffer is full: the inodes it took (each one
    lookup more that the kernel holds, as for a lookup)."""
    taken = []
    for name, attributes, next_id in entries:
        if not pyfuse3.readdir_reply(token, name, attributes, next_id):
            break
        taken.append(attributes.st_ino)
    return taken


@guarded
class KitOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        tree: KitTree,
        stats: Callable[[], dict[str, Any]],
        *,
        timeout: float,
        inode_base: int = 0,
        name: str = "the kit",
        pushes: Pushes | None = None,
    ) -> None:
        super().__init__()
        self.tree = tree
        self.name = name  # the kit's reference, as failures are logged
        # The kernel sees the tree's inodes shifted by this, so that one FUSE mount can serve
        # many trees (``modelkitfs serve``); a mount of one kit keeps the tree's own numbers.
        self.inode_base = inode_base
        self.open_handles = 0  # files and folders open: while any is, the tree must stay
        self.stats = stats
        self.timeout = timeout  # seconds an operation may take before it fails with EIO
        self.pushes = pushes  # the blocks around small reads, into the kernel's page cache
        self.uid, self.gid = os.getuid(), os.getgid()
        self.time_ns = time.time_ns()
        self._listings: dict[int, list[tuple[bytes, int]]] = {}
        self._next_fh = 1

    async def invalidate_blob(self, digest: str) -> None:
        """Make the kernel drop what it cached of files from blob ``digest`` (found corrupt),
        so their next reads come to us. From a thread: the call may block."""
        for inode in self.tree.inodes_of_blob(digest):
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, self.inode_base + inode)
            except OSError as exc:
                log.debug("could not invalidate inode %d: %s", inode, exc)

    def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = self.inode_base + node.inode
        attrs.generation = 0
        attrs.entry_timeout = FOREVER
        attrs.attr_timeout = FOREVER
        attrs.st_mode = node.mode
        attrs.st_nlink = 2 if node.is_dir else 1
        attrs.st_uid, attrs.st_gid = self.uid, self.gid
        attrs.st_size = node.size
        attrs.st_blksize = 128 * 1024
        attrs.st_blocks = (node.size + 511) // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = self.time_ns
        return attrs

    def _node(self, inode: int) -> Node:
        node = self.tree.node(inode - self.inode_base)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def subject(self, handler: str, args: tuple[Any, ...]) -> str:
        return self.name

    async def _guard(self, what: str, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a tree operation within the read deadline; failures become EIO with the reason
        in the log."""
        try:
            return await within(self.timeout, what, function, *args)
        except ModelKitFSError as exc:
            log.error("%s: %s failed: %s", self.name, what, exc)
        except Exception:
            log.exception("%s: %s failed unexpectedly", self.name, what)
        raise pyfuse3.FUSEError(errno.EIO)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        if name == b".":
            node = self._node(parent_inode)
        elif name == b"..":
            node = self.tree.parent(self._node(parent_inode))
        else:
            decoded = os.fsdecode(name)
            local = parent_inode - self.inode_base
            known, found = self.tree.lookup_now(local, decoded)  # its layers indexed: no wait
            if not known:
                what = f"lookup of {decoded!r}"
                found = await self._guard(what, self.tree.lookup, local, decoded)
            if found is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = found
        return self._attributes(node)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.attributes(inode)

    def attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        """What ``getattr`` answers, at once (the tree is in memory)."""
        return self._attributes(self._node(inode))

    async def opendir(self, inode: int, ctx: Any) -> int:
        directory = await self._guard("listing", self.tree.listing, inode - self.inode_base)
        if directory is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if not directory.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        self.open_handles += 1
        self._listings[fh] = sorted(
            (os.fsencode(n), self.inode_base + i) for n, i in directory.children.items()
        )
        return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        reply(token, self.listed(fh, start_id))

    def listed(self, fh: int, start_id: int) -> Iterator[Listed]:
        """The entries of open folder ``fh`` from position ``start_id`` on."""
        listing = self._listings.get(fh, [])
        for position in range(start_id, len(listing)):
            name, inode = listing[position]
            yield name, self._attributes(self._node(inode)), position + 1

    async def releasedir(self, fh: int) -> None:
        self._listings.pop(fh, None)
        self.open_handles -= 1

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self.open_handles += 1
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._node(fh)
        if (data := self.tree.read_now(node, off, size)) is None:
            data = await self._guard(f"read of {node.path!r}", self.tree.read, node, off, size)
        if (
            self.pushes is not None
            and size <= SMALL_READ  # not a readahead request: a reader in order needs no push
            and (block := self._pages_around(node, off)) is not None
        ):
            start, end = block
            read = partial(self.tree.read_held, node, start, end - start)
            self.pushes.after_read(fh, block, (off, off + size), read)
        return data

    def _pages_around(self, node: Node, offset: int) -> tuple[int, int] | None:
        """The whole pages of the cache block holding byte ``offset`` of file ``node`` (the
        file's last page too): a page the block holds only part of is never made whole by a
        push, so it is left to the kernel's own read."""
        if (block := self.tree.block_around(node, offset)) is None:
            return None
        start = -(-block[0] // PAGE) * PAGE
        end = block[1] if block[1] == node.size else block[1] // PAGE * PAGE
        return (start, end) if start < end else None

    async def release(self, fh: int) -> None:
        self.open_handles -= 1

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return not mode & os.W_OK

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        data.f_blocks = (self.tree.total_size + BLOCK_SIZE - 1) // BLOCK_SIZE
        data.f_bfree = data.f_bavail = 0
        data.f_files = self.tree.node_count
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return self._xattr_names(self._node(inode))

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        node = self._node(inode)
        if name not in self._xattr_names(node):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return (await self._xattr(node, name.removeprefix(XATTR).decode())).encode()

    def _xattr_names(self, node: Node) -> list[bytes]:
        """Where a node's bytes come from (layer, media type, Kitfile entry) and how much of
        them is cached; the root also has the daemon's statistics."""
        names = [STATS_XATTR] if node.inode == ROOT_INODE else []
        if node.layer is not None:
            names += [XATTR + n for n in (b"layer", b"media_type", b"entry", b"layer_cached")]
            if not node.is_dir:
                names.append(XATTR + b"cached")
        elif node.content is not None:
            names.append(XATTR + b"entry")
        return names

    async def _xattr(self, node: Node, name: str) -> str:
        """The value of attribute ``user.modelkitfs.<name>``, which ``node`` has."""
        if name == "stats":
            return json.dumps(self.stats(), sort_keys=True)
        if node.layer is None:
            return "the Kitfile (the kit's config)"  # its only attribute: entry
        layer, archive = node.layer, node.layer.archive
        if name == "layer":
            return archive.digest
        if name == "media_type":
            return layer.media_type
        if name == "entry":
            return f"{layer.kind} {layer.path or '.'}"
        if name == "layer_cached":
            return f"{await archive.cached_size()} of {archive.size}"
        amount = await self.tree.cached_bytes(node)
        return "unknown (compressed layer)" if amount is None else f"{amount} of {node.size}"

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        pass  # nodes live as long as the tree: nothing to free
