"""Every FUSE request gets an answer, whatever fails under it.

pyfuse3 answers a :class:`pyfuse3.FUSEError` with its errno, and lets any other exception end
its main loop: the mount goes, and under ``serve`` every kit and every pod's volume with it,
for one kit's fault. So each handler of :class:`~modelkitfs.fuse.operations.KitOperations` and
:class:`~modelkitfs.fuse.service.ServiceOperations` is wrapped here, once: an exception becomes
EIO for that request alone, logged once with the kit it concerns (a failure already turned into
an errno was logged where it was understood, and passes through). ``forget`` answers nothing:
its failure is logged and dropped.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import pyfuse3

from modelkitfs.errors import ModelKitFSError

log = logging.getLogger(__name__)

HANDLERS = (
    "lookup", "forget", "getattr", "readlink", "opendir", "readdir", "releasedir", "open",
    "read", "release", "access", "statfs", "listxattr", "getxattr",
)  # fmt: skip

C = TypeVar("C", bound=type)


class Described(Protocol):
    def subject(self, handler: str, args: tuple[Any, ...]) -> str:
        """The kit (or folder) a request with ``args`` concerns, for the log."""


def guarded(cls: C) -> C:
    """Class decorator: wrap each handler ``cls`` defines (see the module docstring)."""
    for name in HANDLERS:
        if name in vars(cls):
            setattr(cls, name, _guard(name, vars(cls)[name]))
    return cls


def _guard(handler: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def guarded_handler(self: Described, *args: Any) -> Any:
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            if handler == "forget":
                return None
            raise
        except Exception as exc:
            what = f"{handler} of {os.fsdecode(args[1])!r}" if handler == "lookup" else handler
            try:
                subject = self.subject(handler, args)
            except Exception:
                subject = "?"
            if isinstance(exc, ModelKitFSError):
                log.error("%s: %s failed: %s", subject, what, exc)
            else:
                log.error("%s: %s failed unexpectedly", subject, what, exc_info=exc)
            if handler == "forget":
                return None
            raise pyfuse3.FUSEError(errno.EIO) from None

    return guarded_handler
