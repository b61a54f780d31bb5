"""A cache's write health: one warning per episode of faults, writes paused after a failure,
and the episode ended only by a write begun after the last failure."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from modelkitfs.cache import health
from modelkitfs.cache.health import RETRY_SECONDS, WriteHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(health, "time", fake)
    return fake


def full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_writes_pause_after_a_failure_then_are_tried_again(clock: Clock) -> None:
    state = WriteHealth(Path("/cache"))
    assert state.writable
    state.failed(full())
    clock.now += RETRY_SECONDS - 0.1
    assert not state.writable
    clock.now += 0.1
    assert state.writable


def test_a_write_begun_before_the_last_failure_does_not_end_the_episode(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """On a nearly full disk a write in another thread can succeed just after one failed: the
    episode goes on, and its one warning is not followed by "written again" and a second."""
    state = WriteHealth(Path("/cache"))
    with caplog.at_level(logging.INFO, logger="modelkitfs.cache"):
        begun = clock.now
        clock.now += 0.01
        state.failed(full())
        state.succeeded(begun)
        state.failed(full())
        assert state.fault is not None
        assert len([m for m in said(caplog) if "cannot be written" in m]) == 1
        assert not [m for m in said(caplog) if "written again" in m]
        clock.now += RETRY_SECONDS
        state.succeeded(clock.now)  # the first write tried once the pause is over
        assert state.fault is None
        assert [m for m in said(caplog) if "written again" in m]
        state.failed(full())  # a later fault is named again
        assert len([m for m in said(caplog) if "cannot be written" in m]) == 2
