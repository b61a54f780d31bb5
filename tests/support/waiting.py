"""Waiting on a condition, never for a fixed time: poll until it holds, and fail naming what
never came to pass. The bound only ends a test that would hang; it is no claim on speed
(speed is measured in scripts/bench)."""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

POLL = 0.05  # seconds between looks


def wait_for(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never came to pass within {seconds:g} s: {what}"
        time.sleep(POLL)


async def until(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    """:func:`wait_for` in a trio test: for conditions that worker threads bring about, which
    ``trio.testing.wait_all_tasks_blocked`` does not wait for."""
    for _ in range(int(seconds / POLL)):
        if condition():
            return
        await trio.sleep(POLL)
    raise AssertionError(f"never came to pass within {seconds:g} s: {what}")
