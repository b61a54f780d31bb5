"""Waiting on a condition, never for a fixed time: poll until it holds, and fail naming what
never came to pass. The bound only ends a test that would hang; it is no claim on speed
(speed is measured in scripts/bench)."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL = 0.05  # seconds between looks


def wait_for(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never came to pass within {seconds:g} s: {what}"
        time.sleep(POLL)
