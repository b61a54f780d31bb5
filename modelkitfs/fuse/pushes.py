"""Pages pushed into the kernel's page cache around a random reader's small reads.

The kernel reads ahead only for a reader going in order. A random reader (an ``np.memmap``
token file, a database, a row group here and there) gets its pages asked for one request at a
time, and each request costs this one-threaded Python process about 0.2 ms: some 5,000 reads a
second, where the same file on disk serves hundreds of thousands from the page cache (issue
30). So when a small read of a file reaches the daemon, the rest of the cache block it lies in
is pushed into the kernel's page cache (``FUSE_NOTIFY_STORE``, one copy of up to 1 MiB): the
reader's next reads there never leave the kernel, as an ``mmap`` reader's read-around pages
never do. A file read at random is soon whole in the page cache, where a local file would be.
A small file read whole gets no push: its one read brings all of it (pushing it as it was
opened cost more CPU than the read it was to spare, and rarely spared it: the read was on its
way before the push landed).

What is pushed, and when:

- Only bytes already held and checked (the store's ``read_held``: a block in memory, or the
  pages of a block checked in this process, each checked again): a push never downloads, never
  waits for a download, and never hands the kernel a byte a read would not have served.
- Only within the file: a store past its end would make the kernel grow the file.
- Never from a request handler, and never on the event loop: the kernel locks the pages it
  stores, and a page may be locked by a read that only this loop answers. One thread of its
  own stores what the loop hands it (a hand-over costs the loop a queue's put, where a trio
  worker thread cost a wake-up each way); a few pushes at a time, one more is dropped. At the
  session's end the thread is left to finish alone: a store waiting on a page lock ends when
  the mount goes.
- A block is pushed again only if its pages come back as reads ``REPUSH_AFTER`` seconds or
  more after its push (the kernel let them go since: memory was needed, or the page cache was
  dropped). Pushed pages asked for again sooner (not within ``SETTLE``: reads on their way
  as the push landed) mean the page cache cannot keep the file: after ``GIVE_UP`` such reads,
  a file gets no more pushes, as the kernel's own mmap read-around stops for a file it keeps
  missing. Only whole pages are pushed: the kernel keeps a page stored in part only if it is
  the file's last, so a page a block holds in part is left to the kernel's own read.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pyfuse3
import trio

log = logging.getLogger(__name__)

SMALL_READ = 64 * 1024  # larger requests come from the kernel's readahead: a reader in order
REPUSH_AFTER = 1.0  # seconds
SETTLE = 0.2  # seconds after a push within which its block's reads were already asked for
GIVE_UP = 64  # reads of a block pushed less than REPUSH_AFTER ago, per file
QUEUED = 8
WORKERS = 2
FILES = 4096  # files whose pushes are remembered, the most recently pushed

Read = Callable[[], Awaitable[bytes | None]]
Store = Callable[[int, int, bytes], None]  # (kernel inode, offset, bytes), as notify_store


@dataclass
class _File:
    pushed: dict[int, float] = field(default_factory=dict)  # block's start -> when pushed
    pending: dict[int, float] = field(default_factory=dict)  # block's start -> when queued
    too_soon: int = 0  # reads of blocks pushed less than REPUSH_AFTER before


class Pushes:
    """Pushes of the blocks around small reads, for every file of one FUSE session."""

    def __init__(self, store: Store = pyfuse3.notify_store, *, threaded: bool = True) -> None:
        self._store, self._threaded = store, threaded  # threaded False: a test's inline double
        self._send, self._receive = trio.open_memory_channel[tuple[int, int, Read]](QUEUED)
        self._files: OrderedDict[int, _File] = OrderedDict()
        self._outbox: queue.SimpleQueue[tuple[int, int, bytes] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[int, int, int]] = queue.SimpleQueue()
        self._pushed_bytes = 0
        self.given_up = 0  # files that get no more pushes

    @property
    def pushed_bytes(self) -> int:
        """Bytes stored into the kernel's page cache so far."""
        self._landed()
        return self._pushed_bytes

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
        inside = start <= request[0] and request[1] <= end  # else pages it never pushed
        if not self._wanted(inode, file, start, count_too_soon=inside):
            return
        try:
            self._send.send_nowait((inode, start, read))
        except trio.WouldBlock:
            return  # pushes are advice: a reader is never kept waiting for one
        file.pending[start] = trio.current_time()

    def _file(self, inode: int) -> _File:
        self._landed()
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
        if when is None or (age := trio.current_time() - when) >= REPUSH_AFTER:
            return True
        if count_too_soon and age >= SETTLE:  # sooner: a read already under way as it landed
            file.too_soon += 1
            if file.too_soon > GIVE_UP:
                self.given_up += 1
                log.debug("inode %d: the page cache keeps losing its pushed pages", inode)
        return False

    async def run(self) -> None:
        """Push what is queued, until cancelled (the session's end)."""
        if self._threaded:
            threading.Thread(target=self._storing, name="modelkitfs-pushes", daemon=True).start()
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(WORKERS):
                    nursery.start_soon(self._worker)
        finally:
            self._outbox.put(None)  # not waited for (see the module's docstring)

    async def _worker(self) -> None:
        async for inode, start, read in self._receive:
            await self._push(inode, start, read)

    async def _push(self, inode: int, start: int, read: Read) -> None:
        """Read block ``start`` of file ``inode`` if held and hand it to the storing thread;
        a failure is dropped (a reader's own read fails and reports, if it must)."""
        try:
            if data := await read():
                self._outbox.put((inode, start, data))
                if not self._threaded:
                    self._outbox.put(None)
                    self._storing()
                return
        except Exception as exc:
            log.debug("could not read what to push into inode %d: %r", inode, exc)
        self._done.put((inode, start, 0))

    def _storing(self) -> None:
        """The storing thread: each block into the kernel's page cache, and word of it back."""
        while (item := self._outbox.get()) is not None:
            inode, start, data = item
            stored = 0
            try:
                self._store(inode, start, data)
                stored = len(data)
            except OSError as exc:  # ENOENT: the kernel has forgotten the file meanwhile
                if exc.errno != errno.ENOENT:
                    log.debug("could not push into inode %d: %s", inode, exc)
            self._done.put((inode, start, stored))

    def _landed(self) -> None:
        """Note the pushes the storing thread has done (or dropped) since last asked."""
        now = trio.current_time()
        while True:
            try:
                inode, start, stored = self._done.get_nowait()
            except queue.Empty:
                return
            self._pushed_bytes += stored
            if (file := self._files.get(inode)) is not None:
                queued = file.pending.pop(start, now)
                if stored:  # when it was asked for: the loop may look long after (no reads)
                    file.pushed[start] = queued
