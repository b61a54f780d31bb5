"""Pages pushed into the kernel's page cache around a random reader's small reads.

The kernel reads ahead only for a reader going in order. A random reader (an ``np.memmap``
token file, a database, a row group here and there) gets its pages asked for one request at a
time, and each request costs this one-threaded Python process about 0.2 ms: some 5,000 reads a
second, where the same file on disk serves hundreds of thousands from the page cache (issue
30). So when a small read of a file reaches the daemon, the rest of the cache block it lies in
is pushed into the kernel's page cache (``FUSE_NOTIFY_STORE``, one copy of up to 1 MiB): the
reader's next reads there never leave the kernel, as an ``mmap`` reader's read-around pages
never do. A file read at random is soon whole in the page cache, where a local file would be.
A small file (an image of a folder a data loader reads) is pushed whole as it is opened, before
the open is answered: its reader's read is then a page-cache hit, one request fewer a file.

What is pushed, and when:

- Only bytes already held and checked (the store's ``read_held``: a block in memory, or the
  pages of a block checked in this process, each checked again): a push never downloads, never
  waits for a download, and never hands the kernel a byte a read would not have served.
- Only within the file: a store past its end would make the kernel grow the file.
- Never from a request handler, and never on the event loop: the kernel locks the pages it
  stores, and a page may be locked by a read that only this loop answers. Pushes run in a
  worker thread, after the reply, a few at a time; one that finds its queue full is dropped.
- A block is pushed again only if its pages come back as reads ``REPUSH_AFTER`` seconds or
  more after its push (the kernel let them go since: memory was needed, or the page cache was
  dropped). Pages asked for again sooner mean the page cache cannot keep the file: after
  ``GIVE_UP`` such reads, a file gets no more pushes, as the kernel's own mmap read-around
  stops for a file it keeps missing.
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pyfuse3
import trio

log = logging.getLogger(__name__)

SMALL_READ = 64 * 1024  # larger requests come from the kernel's readahead: a reader in order
REPUSH_AFTER = 1.0  # seconds
GIVE_UP = 64  # reads of a block pushed less than REPUSH_AFTER ago, per file
QUEUED = 8
WORKERS = 2
FILES = 4096  # files whose pushes are remembered, the most recently pushed

Read = Callable[[], Awaitable[bytes | None]]
Store = Callable[[int, int, bytes], None]  # (kernel inode, offset, bytes), as notify_store
InThread = Callable[..., Awaitable[object]]  # runs a blocking call off the event loop


@dataclass
class _File:
    pushed: dict[int, float] = field(default_factory=dict)  # block's start -> when pushed
    pending: set[int] = field(default_factory=set)
    too_soon: int = 0  # reads of blocks pushed less than REPUSH_AFTER before


class Pushes:
    """Pushes of the blocks around small reads, for every file of one FUSE session."""

    def __init__(
        self, store: Store = pyfuse3.notify_store, in_thread: InThread = trio.to_thread.run_sync
    ) -> None:
        self._store, self._in_thread = store, in_thread
        self._send, self._receive = trio.open_memory_channel[tuple[int, int, Read]](QUEUED)
        self._files: OrderedDict[int, _File] = OrderedDict()
        self.pushed_bytes = 0
        self.given_up = 0  # files that get no more pushes

    def after_read(
        self, inode: int, block: tuple[int, int], request: tuple[int, int], read: Read
    ) -> None:
        """A read of bytes ``request`` of file ``inode`` reached the daemon (so the kernel
        lacks them): push the bytes ``block`` of the file (the cache block they lie in, which
        ``read`` reads if held) unless the read is no small one, or the block holds no more
        than it, or the policy above says no."""
        start, end = block
        if request[1] - request[0] > SMALL_READ or (start >= request[0] and end <= request[1]):
            return
        file = self._file(inode)
        if not self._wanted(inode, file, start, count_too_soon=True):
            return
        try:
            self._send.send_nowait((inode, start, read))
        except trio.WouldBlock:
            return  # pushes are advice: a reader is never kept waiting for one
        file.pending.add(start)

    async def opened(self, inode: int, read: Read) -> None:
        """Small file ``inode`` is being opened: push its bytes (``read`` reads them if held)
        before the open is answered, so that its reader's read never reaches the daemon."""
        file = self._file(inode)
        if self._wanted(inode, file, 0, count_too_soon=False):  # opened again soon: still there
            file.pending.add(0)
            await self._push(inode, 0, read)

    def _file(self, inode: int) -> _File:
        file = self._files.get(inode)
        if file is None:
            file = self._files[inode] = _File()
            if len(self._files) > FILES:
                self._files.popitem(last=False)
        else:
            self._files.move_to_end(inode)
        return file

    def _wanted(self, inode: int, file: _File, start: int, *, count_too_soon: bool) -> bool:
        """Whether block ``start`` of ``file`` is to be pushed now (see the module's policy)."""
        if file.too_soon > GIVE_UP or start in file.pending:
            return False
        when = file.pushed.get(start)
        if when is None or trio.current_time() - when >= REPUSH_AFTER:
            return True
        if count_too_soon:
            file.too_soon += 1
            if file.too_soon > GIVE_UP:
                self.given_up += 1
                log.debug("inode %d: the page cache keeps losing its pushed pages", inode)
        return False

    async def run(self) -> None:
        """Push what is queued, until cancelled (the session's end)."""
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(self._worker)

    async def _worker(self) -> None:
        async for inode, start, read in self._receive:
            await self._push(inode, start, read)

    async def _push(self, inode: int, start: int, read: Read) -> None:
        """Read block ``start`` of file ``inode`` if held, store it in the kernel's page cache
        from a worker thread, and note it; whatever fails is dropped (a reader's own read fails
        and reports, if it must)."""
        pushed = False
        try:
            if data := await read():
                await self._in_thread(self._store, inode, start, data)
                self.pushed_bytes += len(data)
                pushed = True
        except OSError as exc:  # ENOENT: the kernel has forgotten the file meanwhile
            if exc.errno != errno.ENOENT:
                log.debug("could not push into inode %d: %s", inode, exc)
        except Exception as exc:
            log.debug("could not read what to push into inode %d: %r", inode, exc)
        finally:
            if (file := self._files.get(inode)) is not None:
                file.pending.discard(start)
                if pushed:
                    file.pushed[start] = trio.current_time()
