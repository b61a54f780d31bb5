"""Whether the cache can be written, and the one warning a process gives when it cannot.

A read-only cache folder, a full disk or one out of inodes must cost speed, never a read: the
blocks go on being served from memory and the network, and what is already cached is still read
from disk. A process says so once, naming the folder and what to do, and tries writing again
every ``RETRY_SECONDS``; once a write succeeds it says that too, and a later fault is named
again.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("modelkitfs.cache")

RETRY_SECONDS = 5.0


def advice(root: Path, exc: OSError) -> str:
    """What to do about ``exc`` on the cache at ``root``."""
    code = exc.errno
    if code == errno.EROFS:
        return f"remount {root} read-write, or choose another cache with --cache-dir"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"free space or inodes on the file system of {root} (or lower its size cap with "
            "'modelkitfs cache prune'), or choose another cache with --cache-dir"
        )
    if code in (errno.EACCES, errno.EPERM):
        return f"make {root} writable for user {os.getuid()}, or choose another with --cache-dir"
    return f"check the disk of {root}, or choose another cache with --cache-dir"


def describe(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space or no inodes left on its file system"
    return exc.strerror or str(exc)


class WriteHealth:
    """Write faults of one cache in one process (thread-safe: writes run in worker threads)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fault: OSError | None = None  # the fault of the episode under way
        self.failures = 0
        self._retry_at = 0.0
        self._failed_at = 0.0
        self._lock = threading.Lock()

    @property
    def writable(self) -> bool:
        """False for ``RETRY_SECONDS`` after a write failed: callers skip writing meanwhile."""
        return time.monotonic() >= self._retry_at

    def failed(self, exc: OSError) -> None:
        with self._lock:
            self.failures += 1
            self._failed_at = time.monotonic()
            self._retry_at = self._failed_at + RETRY_SECONDS
            first = self.fault is None
            self.fault = exc
        if first:
            log.warning(
                "cache %s cannot be written (%s): reads are served from memory and the network, "
                "uncached; %s",
                self.root,
                describe(exc),
                advice(self.root, exc),
            )

    def succeeded(self, started: float) -> None:
        """A write begun at ``started`` (``time.monotonic()``) succeeded. Only one begun after
        the last failure ends the episode: on a disk with a few free inodes or bytes left, a
        write in another thread may still succeed just after one failed."""
        if self.fault is None:
            return
        with self._lock:
            if started < self._failed_at:
                return
            was, self.fault = self.fault, None
        if was is not None:
            log.info("cache %s can be written again: caching resumes", self.root)

    def error_message(self, action: str, exc: OSError) -> str:
        """One line for a command that cannot do ``action`` (``clear``...) on the cache."""
        return f"cannot {action} cache {self.root} ({describe(exc)}): {advice(self.root, exc)}"
