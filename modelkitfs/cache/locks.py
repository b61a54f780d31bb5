"""Locks of the shared cache: who downloads a block, who uses one, and which processes live.

All of them are kernel locks that die with their holder, so nothing here depends on the clock
or on a process cleaning up after itself:

- **Download locks**: a write lock on byte ``i`` of a blob's lock file while a process
  downloads block ``i`` (open file description locks: one call for a run of blocks, no file
  per block). Others wait for that download instead of repeating it, but not for longer than
  a read can wait (a holder may be stopped: :mod:`~modelkitfs.blobs.downloads` overtakes it).
  Only a write lock is a claim: it takes a descriptor open for writing, which only a process
  that can write the cache gets, whereas any process that can read a lock file could hold a
  read lock there for ever. Lock files are 0600 in folders 0700, and a process that writes a
  cache whose ``locks`` folder an earlier version left open to others closes it.
- **Pins**: a read lock on byte ``PIN_BASE + i`` of the same file while a process holds block
  ``i`` in use (in its memory, being served). Eviction skips pinned blocks. Read locks need a
  read-only descriptor only, so pins never stop a file system from being remounted read-only.
- **Process locks**: ``locks/procs/<id>``, flocked by each process that uses the cache for as
  long as it runs. The id names the temporary files the process writes, so a temporary file
  whose writer is gone is told from one being written without looking at its age; and a
  process can tell whether others use the cache (before changing its size cap).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import struct
import threading
import time
from pathlib import Path

from modelkitfs.cache.blockfile import FILE_MODE, FOLDER_MODE, make_folders

PIN_BASE = 1 << 40  # pins live far beyond the download locks of any blob
RETRY_OPEN_SECONDS = 5.0  # after a lock file could not be opened (a read-only cache, say)
_FLOCK = "hhqqi4x"  # struct flock: l_type, l_whence, l_start, l_len, l_pid


def range_lock(fd: int, kind: int, start: int, length: int) -> bool:
    """Take (or with F_UNLCK drop) an open file description lock on ``length`` bytes from
    ``start``, without waiting; False when another holds part of it."""
    if fd < 0:
        return kind == fcntl.F_UNLCK
    request = struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except (BlockingIOError, PermissionError):  # EAGAIN, or EACCES on some systems
        return False
    return True


def claimed_elsewhere(fd: int, index: int) -> bool:
    """Whether another holds a write lock on byte ``index`` (a download claim); a read lock
    there is none (see above)."""
    probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, index, 1, 0)
    kind = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe))[0]
    return kind == fcntl.F_WRLCK


def open_lock_file(path: Path, flags: int) -> int:
    """A descriptor of the lock file at ``path``, created (with its folders) when missing."""
    try:
        return os.open(path, flags | os.O_CREAT, FILE_MODE)
    except FileNotFoundError:
        make_folders(path.parent)
        return os.open(path, flags | os.O_CREAT, FILE_MODE)


def close_to_others(folder: Path) -> None:
    """Make ``folder`` its owner's alone, when this process owns it and it is open to others
    (made by an earlier version)."""
    with contextlib.suppress(OSError):
        info = folder.stat()
        if info.st_uid == os.geteuid() and info.st_mode & 0o077:
            folder.chmod(FOLDER_MODE)


class BlockLocks:
    """Download locks held on blocks of one blob; the lock file closes with the last. With
    ``fd`` -1 the claim is only this process's (the lock file could not be created: a
    read-only or full cache, where nothing is written for others to wait on anyway).
    ``overtaken``: held blocks whose lock another holds (it has held it too long)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.held: set[int] = set()
        self.overtaken: set[int] = set()

    def release(self, index: int) -> None:
        if index in self.held:
            self.held.discard(index)
            range_lock(self.fd, fcntl.F_UNLCK, index, 1)
            if not self.held:
                self.close()

    def release_from(self, first: int) -> None:
        """Release every held block from ``first`` on (all of them when none is left)."""
        range_lock(self.fd, fcntl.F_UNLCK, first, 0)  # length 0: to the end of the file
        self.held = {i for i in self.held if i < first}
        if not self.held:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases whatever is left
            self.fd = -1


def pinned_blocks(path: Path, indexes: list[int]) -> set[int]:
    """Which of ``indexes`` some process (this one included) has pinned in the lock file at
    ``path``. One F_OFD_GETLK per pinned run, not per block."""
    if not indexes:
        return set()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return set()  # no lock file: nobody pins anything of this blob
    try:
        found: set[int] = set()
        start, stop = min(indexes), max(indexes) + 1
        while start < stop:
            at, length = PIN_BASE + start, stop - start
            probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, at, length, 0)
            kind, _, lock_start, length, _ = struct.unpack(
                _FLOCK, fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe)
            )
            if kind == fcntl.F_UNLCK:
                break
            first = lock_start - PIN_BASE
            last = stop if length == 0 else min(stop, first + length)
            found.update(range(max(first, start), last))
            start = last
        wanted = set(indexes)
        return found & wanted
    finally:
        os.close(fd)


class BlockPins:
    """The pins one process holds, on blocks of any blob: :meth:`pin` while a block is in use,
    :meth:`unpin` once it is not. A lock file that cannot be opened (a read-only cache) means
    no pins for a while: nothing evicts on such a cache anyway."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._failed: dict[Path, float] = {}

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        failed = self._failed.get(path)
        if failed is not None and time.monotonic() - failed < RETRY_OPEN_SECONDS:
            return -1
        try:
            fd = open_lock_file(path, os.O_RDONLY)
        except OSError:
            self._failed[path] = time.monotonic()
            return -1
        self._failed.pop(path, None)
        self._fds[path] = fd
        return fd

    def pin(self, path: Path, index: int) -> None:
        fd = self._fd(path)
        if fd >= 0:
            range_lock(fd, fcntl.F_RDLCK, PIN_BASE + index, 1)

    def unpin(self, path: Path, index: int) -> None:
        fd = self._fds.get(path)
        if fd is not None:
            range_lock(fd, fcntl.F_UNLCK, PIN_BASE + index, 1)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def try_flock(path: Path) -> int | None:
    """An exclusive flock on ``path`` (created when missing), or None when another holds it."""
    fd = open_lock_file(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class ProcessLock:
    """This process's lock in ``<root>/locks/procs``: held from :meth:`acquire` until the
    process ends (or :meth:`release`). Its id names the temporary files the process writes."""

    def __init__(self, root: Path) -> None:
        self.directory = root / "locks" / "procs"
        self.id = f"w{os.getpid()}x{secrets.token_hex(4)}"
        self._fd = -1
        self._lock = threading.Lock()  # writes in several worker threads take it at once

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self) -> str:
        """Hold the lock (raises OSError when it cannot be created); returns the id."""
        if self._fd >= 0:
            return self.id
        with self._lock:
            self._acquire()
        return self.id

    def _acquire(self) -> None:
        if self._fd < 0:
            # Locked under a name nobody looks at, then renamed: a process looking for dead
            # ones never sees this file unlocked.
            new = self.directory / f".new-{self.id}"
            fd = try_flock(new)
            if fd is None:  # cannot happen: the id is this process's alone
                raise BlockingIOError(f"process lock {self.id} is held elsewhere")
            try:
                os.replace(new, self.directory / self.id)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    new.unlink()
                raise
            self._fd = fd
            close_to_others(self.directory.parent)

    def release(self) -> None:
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    (self.directory / self.id).unlink()
                os.close(self._fd)
                self._fd = -1


def process_alive(root: Path, owner: str) -> bool:
    """Whether the process with lock id ``owner`` still runs: its lock file exists and is
    held. A dead one's lock file is removed."""
    path = root / "locks" / "procs" / owner
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume it lives
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()
    return False


def live_processes(root: Path) -> list[str]:
    """Ids of the processes that use the cache at ``root`` now (held process locks)."""
    try:
        names = os.listdir(root / "locks" / "procs")
    except OSError:
        return []
    return [n for n in names if not n.startswith(".") and process_alive(root, n)]
