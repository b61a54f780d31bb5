"""The floor of a pyfuse3 filesystem: a folder's files served from memory, doing nothing else.

Usage: ``pyfuse3_floor.py SOURCE MOUNTPOINT``. Every file under SOURCE is read into memory and
served read-only at MOUNTPOINT, with the kernel tuned as modelkitfs tunes it (readahead, requests
in flight) and the same caching (entries, attributes and pages kept). What modelkitfs adds on
top (a cache on disk, checksums, a registry behind) is then what the bench's figures show beyond
this floor: a figure this floor cannot reach is bound by pyfuse3 itself (one thread, one trio
task a request), not by modelkitfs. Runs until unmounted.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pyfuse3
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modelkitfs.fuse.session import mount_options, serve

FOREVER = float(2**31)


class Floor(pyfuse3.Operations):
    def __init__(self, source: Path) -> None:
        super().__init__()
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: ""}
        self.inodes: dict[str, int] = {"": pyfuse3.ROOT_INODE}
        self.children: dict[int, dict[bytes, int]] = {pyfuse3.ROOT_INODE: {}}
        self.data: dict[int, bytes] = {}
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source).as_posix()
            inode = len(self.paths) + 1
            self.paths[inode], self.inodes[relative] = relative, inode
            parent = self.inodes[relative.rpartition("/")[0]]
            self.children[parent][os.fsencode(path.name)] = inode
            if path.is_dir():
                self.children[inode] = {}
            else:
                self.data[inode] = path.read_bytes()

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.entry_timeout = attrs.attr_timeout = FOREVER
        is_dir = inode in self.children
        attrs.st_mode = (stat.S_IFDIR | 0o755) if is_dir else (stat.S_IFREG | 0o644)
        attrs.st_size = 0 if is_dir else len(self.data[inode])
        attrs.st_blksize = 128 * 1024
        return attrs

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        inode = self.children.get(parent_inode, {}).get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(inode)

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._attributes(inode)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = sorted(self.children[fh].items())
        for position in range(start_id, len(entries)):
            name, inode = entries[position]
            if not pyfuse3.readdir_reply(token, name, self._attributes(inode), position + 1):
                return

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.data[fh][off : off + size]


def main() -> None:
    source, mountpoint = Path(sys.argv[1]), sys.argv[2]
    operations = Floor(source)
    ready = Path(mountpoint + ".ready")
    trio.run(serve, operations, mountpoint, mount_options("floor", False), ready.touch)


if __name__ == "__main__":
    main()
