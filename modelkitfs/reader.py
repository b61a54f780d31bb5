"""A ModelKit read in this process, without FUSE (containers without /dev/fuse, fsspec).

:class:`KitReader` opens a kit as a mount would (same registry client, blob store and shared disk
cache, same merged tree), on a trio loop in a background thread, and serves blocking calls from
any thread: list, stat, and files that read lazily, fetching ahead for a reader that goes in
order, as a mount does.

>>> with KitReader("registry.example/team/llm:v1") as kit:
...     with kit.open("data/train.csv") as f:
...         header = f.readline()
"""

from __future__ import annotations

import errno
import io
import posixpath
import stat
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from modelkitfs.cache import default_cache_dir
from modelkitfs.errors import ModelKitFSError
from modelkitfs.kit import ROOT_INODE, ModelKit, Node
from modelkitfs.primitives.deadline import within
from modelkitfs.reference import parse_reference
from modelkitfs.session import Sources, open_kit
from modelkitfs.session.options import MountOptions, merged_options

T = TypeVar("T")
READ_BUFFER = 1024 * 1024
OPEN_TIMEOUT = 300.0


@dataclass(frozen=True)
class Cached:
    """What the cache holds of a file: its own bytes (None when not known per file: a
    compressed layer), and of the layer blob it is in."""

    file_bytes: int | None
    layer: str | None  # the layer's digest (None for the Kitfile, which is no layer)
    layer_bytes: int
    layer_size: int


@dataclass(frozen=True)
class EntryInfo:
    """What ``stat`` would say of a file or directory of the kit."""

    path: str  # relative to the kit's root, "" for the root
    is_dir: bool
    size: int
    mode: int  # permission bits


class KitReader:
    """One kit, opened at construction (raising a :class:`ModelKitFSError` naming what is
    wrong), closed by :meth:`close` or the end of a ``with`` block."""

    def __init__(
        self, reference: str, options: MountOptions | None = None, **overrides: Any
    ) -> None:
        self.options = merged_options(options, overrides)
        self.options = self.options.replace(cache_dir=self.options.cache_dir or default_cache_dir())
        self.ref = parse_reference(reference)
        self.reference = str(self.ref)
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._opened = threading.Event()
        self._failure: BaseException | None = None
        self.kit: ModelKit | None = None
        self.sources: Sources | None = None
        self._thread = threading.Thread(target=self._run, name="modelkitfs-reader", daemon=True)
        self._thread.start()
        if not self._opened.wait(OPEN_TIMEOUT):
            raise ModelKitFSError(f"opening {reference} took longer than {OPEN_TIMEOUT:g} s")
        if self._failure is not None:
            self._thread.join()
            raise self._failure

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the constructor, or logged by trio
            if not self._opened.is_set():
                self._failure = exc
                self._opened.set()

    async def _serve(self) -> None:
        async with open_kit(self.ref, self.options) as opened:
            self.kit, self.sources = opened.kit, opened.sources
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._opened.set()
            await self._stop.wait()

    def close(self) -> None:
        """Finish cache writes and stop the background loop."""
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()

    def __enter__(self) -> KitReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- blocking calls, from any thread -----------------------------------------------------

    def _call(self, what: str, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._token is None or not self._thread.is_alive():
            raise ModelKitFSError(f"{self.reference} is closed")
        return trio.from_thread.run(
            within, self.options.timeout, what, function, *args, trio_token=self._token
        )

    def node(self, path: str) -> Node:
        """The file or directory at ``path`` (relative to the kit's root); FileNotFoundError
        when there is none."""
        return self._call(f"lookup of {path!r}", self._node, path)

    async def _node(self, path: str) -> Node:
        assert self.kit is not None
        tree = self.kit.tree
        node = tree.node(ROOT_INODE)
        for name in _parts(path):
            found = await tree.lookup(node.inode, name) if node and node.is_dir else None
            if found is None:
                raise FileNotFoundError(f"{self.reference} has no {path!r}")
            node = found
        assert node is not None
        return node

    def info(self, path: str) -> EntryInfo:
        return _info(self.node(path))

    def listdir(self, path: str = "") -> list[EntryInfo]:
        """The entries of the directory at ``path``, sorted by name."""
        return self._call(f"listing of {path!r}", self._listdir, path)

    async def _listdir(self, path: str) -> list[EntryInfo]:
        assert self.kit is not None
        node = await self._node(path)
        if not node.is_dir:
            raise NotADirectoryError(f"{path!r} of {self.reference} is a file")
        directory = await self.kit.tree.listing(node.inode)
        assert directory is not None
        return sorted(
            (
                _info(child)
                for inode in directory.children.values()
                if (child := self.kit.tree.node(inode))
            ),
            key=lambda entry: entry.path,
        )

    @property
    def fetched_bytes(self) -> int:
        """Blob bytes fetched from registries so far (for progress reports)."""
        return self.sources.fetched_bytes if self.sources is not None else 0

    def call(self, what: str, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await function(*args)`` on the kit's loop, within the timeout (``what`` names it
        in the error when it is not done in time); for reports the reader does not make."""
        return self._call(what, function, *args)

    def cached(self, path: str) -> Cached:
        """How much of the file at ``path`` the cache holds, and of the layer it is in."""
        return self._call(f"cache lookup of {path!r}", self._cached, path)

    async def _cached(self, path: str) -> Cached:
        assert self.kit is not None
        node = await self._node(path)
        if node.is_dir or node.layer is None:
            return Cached(node.size if not node.is_dir else 0, None, 0, 0)
        archive = node.layer.archive
        return Cached(
            await self.kit.tree.cached_bytes(node),
            archive.digest,
            await archive.cached_size(),
            archive.size,
        )

    def read(self, node: Node, offset: int, size: int) -> bytes:
        assert self.kit is not None
        return self._call(f"read of {node.path!r}", self.kit.tree.read, node, offset, size)

    def open(self, path: str, buffering: int = READ_BUFFER) -> io.BufferedReader:
        """A seekable binary file, read lazily through the shared cache."""
        return io.BufferedReader(self.raw_file(path), buffering)

    def raw_file(self, path: str) -> KitFile:
        node = self.node(path)
        if node.is_dir:
            raise IsADirectoryError(f"{path!r} of {self.reference} is a directory")
        return KitFile(self, node)


class KitFile(io.RawIOBase):
    """The bytes of one file of a :class:`KitReader`."""

    def __init__(self, reader: KitReader, node: Node) -> None:
        super().__init__()
        self.reader = reader
        self.node = node
        self.name = node.path
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with memoryview(buffer) as view:
            try:
                data = self.reader.read(self.node, self._position, len(view))
            except ModelKitFSError as exc:
                raise OSError(errno.EIO, f"reading {self.name} failed: {exc}") from None
            view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.node.size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position


def _parts(path: str) -> list[str]:
    cleaned = posixpath.normpath("/" + path.strip("/")).lstrip("/")
    return [part for part in cleaned.split("/") if part]


def _info(node: Node) -> EntryInfo:
    return EntryInfo(
        node.path, node.is_dir, 0 if node.is_dir else node.size, stat.S_IMODE(node.mode)
    )


class _OwningFile(io.BufferedReader):
    """A file that closes the reader it came from when it is closed."""

    def __init__(self, raw: KitFile, buffering: int) -> None:
        super().__init__(raw, buffering)
        self._reader = raw.reader

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._reader.close()


def open_file(
    reference: str, path: str, options: MountOptions | None = None, **overrides: Any
) -> io.BufferedReader:
    """``path`` of the kit ``reference`` as a seekable binary file, read lazily through the
    shared cache with no FUSE at all; ``overrides`` are :class:`MountOptions` fields
    (``plain_http=True``, ``cache_dir=...``)."""
    reader = KitReader(reference, options, **overrides)
    try:
        return _OwningFile(reader.raw_file(path), READ_BUFFER)
    except BaseException:
        reader.close()
        raise
