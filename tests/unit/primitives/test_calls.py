"""Blocking calls with a deadline: answered in time, abandoned after it, bounded in number."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from modelkitfs.primitives.calls import Call, Calls, NoAnswer
from tests.support.waiting import wait_for

SHORT = 0.01  # a deadline the stuck calls below always miss


def answers(calls: Calls, key: str | None = None) -> bool:
    """Whether a call is made and answered now."""
    try:
        return calls.run(60, "stat", lambda call: True, key=key)
    except NoAnswer:
        return False


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """What stuck calls wait for; set at the end whatever happens."""
    event = threading.Event()
    yield event
    event.set()


def test_a_result_or_an_error_within_the_deadline() -> None:
    calls = Calls()
    assert calls.run(60, "adding", lambda call: 1 + 1) == 2
    with pytest.raises(FileNotFoundError):
        calls.run(60, "looking", lambda call: os.stat("/nonexistent/x"))


def test_a_call_past_its_deadline_is_abandoned_and_told_so(release: threading.Event) -> None:
    calls = Calls()
    kept: list[bool] = []

    def stuck(call: Call[None]) -> None:
        release.wait()
        kept.append(call.keep())

    with pytest.raises(NoAnswer) as raised:
        calls.run(SHORT, "publishing x", stuck)
    assert str(raised.value) == f"publishing x: no answer within {SHORT:g} s"
    release.set()
    wait_for(lambda: kept, "the abandoned call to end")
    assert kept == [False]  # nobody hears of it: it undoes what it did
    assert calls.run(60, "next", lambda call: call.keep())  # a call in time keeps its result


def test_abandoned_calls_are_bounded(release: threading.Event) -> None:
    calls = Calls(max_abandoned=2)
    for _ in range(2):
        with pytest.raises(NoAnswer):
            calls.run(SHORT, "stat", lambda call: release.wait())
    started: list[Call[None]] = []
    with pytest.raises(NoAnswer) as raised:
        calls.run(60, "stat", started.append)
    assert str(raised.value) == "stat: 2 earlier calls have not returned"
    assert started == []  # refused at once, no thread added
    release.set()
    wait_for(lambda: answers(calls), "the stuck calls to return")


def test_a_key_known_not_to_answer_fails_at_once(release: threading.Event) -> None:
    calls = Calls()
    runs: list[int] = []

    def ask(call: Call[bool]) -> bool:
        runs.append(1)
        return release.wait()

    with pytest.raises(NoAnswer):
        calls.run(SHORT, "the service", ask, key="root")
    with pytest.raises(NoAnswer) as raised:
        calls.run(60, "the service", ask, key="root")
    assert str(raised.value) == "the service: still no answer"
    assert len(runs) == 1  # the second asked nothing: the first still waits
    release.set()
    wait_for(lambda: answers(calls, "root"), "the service to answer")
    assert len(runs) == 1  # the stuck call ended: the next one was a new one


def test_a_failure_after_the_deadline_is_logged(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    def stuck(call: Call[None]) -> None:
        release.wait()
        raise OSError("the folder is gone")

    with pytest.raises(NoAnswer):
        Calls().run(SHORT, "publishing x", stuck)
    release.set()
    late = "publishing x failed after its caller gave up: the folder is gone"
    wait_for(lambda: late in [r.getMessage() for r in caplog.records], "the late failure's log")


def test_calls_started_together_share_one_deadline(release: threading.Event) -> None:
    """One call that never answers costs the others nothing: each is waited for against the
    same deadline, and those that answered are heard, in any order."""
    calls = Calls()
    stuck = calls.start("asking the stopped one", lambda call: release.wait())
    answered = [calls.start(f"asking {n}", lambda call, n=n: n * n) for n in range(3)]
    with pytest.raises(NoAnswer) as raised:
        calls.wait(stuck, SHORT)
    assert str(raised.value) == f"asking the stopped one: no answer within {SHORT:g} s"
    assert [calls.wait(call, 60) for call in answered] == [0, 1, 4]
    release.set()
    wait_for(lambda: stuck.done.is_set(), "the stuck call to return once released")
    assert calls.run(60, "asking the stopped one again", lambda call: release.wait())
