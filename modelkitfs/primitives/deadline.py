"""Wait for shared work at most so long, without cancelling it.

A read that cannot be served in time must fail rather than hang, yet what it started (a
download, an index) is shared with other readers and worth finishing: it is cached for the next
read. So the work runs in a task of its own and only the wait is bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio

from modelkitfs.errors import ModelKitFSError

log = logging.getLogger(__name__)

T = TypeVar("T")


class DeadlineExceeded(ModelKitFSError):
    """The work was not done within the deadline (it goes on in the background)."""


async def within(seconds: float, what: str, function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await function(*args)`` in a task of its own; its result, or its error, if it ends
    within ``seconds``; else :class:`DeadlineExceeded`. An error that comes after the deadline
    is logged, as nobody is left to hear of it."""
    done = trio.Event()
    result: list[outcome.Outcome[T]] = []
    abandoned = False

    async def run() -> None:
        result.append(await outcome.acapture(function, *args))
        done.set()
        if abandoned and isinstance(result[0], outcome.Error):
            error = result[0].error
            if isinstance(error, ModelKitFSError):
                log.error("%s (after its deadline) failed: %s", what, error)
            else:
                log.error("%s (after its deadline) failed unexpectedly", what, exc_info=error)

    trio.lowlevel.spawn_system_task(run)
    with trio.move_on_after(seconds):
        await done.wait()
    if not result:
        abandoned = True
        raise DeadlineExceeded(f"not served within {seconds:g} s (--timeout)")
    return result[0].unwrap()
