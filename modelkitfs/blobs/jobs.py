"""Background work with an owner: tasks that run behind a reader (a block's disk write, a blob's
verification, fetching ahead, streaming a blob from a server that ignores ``Range``) run in the
nursery of the session that opened the store, so that the session's end joins them.

A :class:`Jobs` is one kind of such work: it counts the tasks it started, so that
:meth:`Jobs.join` waits for exactly those (a store's ``flush`` joins its disk writes and its
verifications), and :meth:`Jobs.cancel` stops them (fetching ahead is of no use once the
mount goes). A job that fails is logged, never allowed to cancel the session's other work.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger(__name__)


class Jobs:
    def __init__(self, nursery: trio.Nursery, what: str) -> None:
        self.nursery = nursery
        self.what = what  # for the log: "writing a block to the cache", say
        self.running = 0
        self._idle = trio.Event()
        self._idle.set()
        self._scopes: set[trio.CancelScope] = set()

    def start(self, work: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``work(*args)`` in the background (from the event loop's thread)."""
        if self.running == 0:
            self._idle = trio.Event()
        self.running += 1
        self.nursery.start_soon(self._run, work, args)

    async def _run(self, work: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await work(*args)
        except Exception:
            log.exception("%s failed unexpectedly", self.what)
        finally:
            self._scopes.discard(scope)
            self.running -= 1
            if self.running == 0:
                self._idle.set()

    async def join(self) -> None:
        """Wait until every job started so far, and every job those start, has ended."""
        while self.running:
            await self._idle.wait()

    def cancel(self) -> None:
        """Stop the jobs running now (they end at their next checkpoint)."""
        for scope in self._scopes:
            scope.cancel()
