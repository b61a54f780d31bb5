"""The retry policy under trio's MockClock: what is retried (by type, never by message),
how long it waits, and that it never starts an attempt past the deadline."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from modelkitfs.errors import GaveUp, NotFound, TransientError, Unreachable
from modelkitfs.registry.retry import RetryBudget, retry_after_seconds, retrying


def run(function, *args):
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(function, *args, clock=clock)


class Flaky:
    """Fails with ``errors`` in turn, then returns "ok"; records when each attempt came."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.times: list[float] = []

    async def __call__(self) -> str:
        self.times.append(trio.current_time())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_transient_failures_are_retried_until_success() -> None:
    flaky = Flaky(TransientError("503"), TransientError("reset"), Unreachable("refused"))

    async def main() -> str:
        return await retrying(flaky, RetryBudget(60), "reading x")

    assert run(main) == "ok"
    assert len(flaky.times) == 4
    waits = [b - a for a, b in zip(flaky.times, flaky.times[1:], strict=False)]
    assert all(w > 0 for w in waits) and waits[2] > waits[0]  # it backs off


def test_final_failures_are_not_retried() -> None:
    flaky = Flaky(NotFound("404"))

    async def main() -> None:
        await retrying(flaky, RetryBudget(60), "reading x")

    with pytest.raises(NotFound):
        run(main)
    assert len(flaky.times) == 1


def test_retry_after_is_waited_for_when_it_fits() -> None:
    flaky = Flaky(TransientError("429", retry_after=7))

    async def main() -> str:
        return await retrying(flaky, RetryBudget(60), "reading x")

    assert run(main) == "ok"
    assert flaky.times[1] - flaky.times[0] >= 7


def test_retry_after_past_the_deadline_fails_at_once_saying_why() -> None:
    flaky = Flaky(TransientError("429", retry_after=600))

    async def main() -> None:
        await retrying(flaky, RetryBudget(60), "reading x")

    with pytest.raises(GaveUp) as failure:
        run(main)
    assert len(flaky.times) == 1
    assert "asked to wait 600 s" in str(failure.value) and "60 s (--timeout)" in str(failure.value)


def test_no_attempt_starts_after_the_deadline_and_the_last_comes_at_it() -> None:
    flaky = Flaky(*[TransientError("503")] * 100)

    async def main() -> None:
        await retrying(flaky, RetryBudget(10, attempts=100, grace=2), "reading x")

    with pytest.raises(GaveUp) as failure:
        run(main)
    assert max(flaky.times) <= 12
    assert max(flaky.times) >= 11  # an attempt at the deadline, not a give-up seconds before
    assert isinstance(failure.value.last, TransientError) and "503" in str(failure.value)


def test_unreachable_gets_fewer_attempts_when_asked() -> None:
    flaky = Flaky(*[Unreachable("refused")] * 10)

    async def main() -> None:
        await retrying(flaky, RetryBudget(60, unreachable_attempts=3), "manifest")

    with pytest.raises(GaveUp) as failure:
        run(main)
    assert len(flaky.times) == 3 and isinstance(failure.value.last, Unreachable)


def test_each_failure_is_seen_before_the_pause() -> None:
    seen: list[str] = []
    flaky = Flaky(TransientError("a"), TransientError("b"))

    async def main() -> str:
        return await retrying(
            flaky, RetryBudget(60), "x", on_failure=lambda exc: seen.append(str(exc))
        )

    assert run(main) == "ok" and seen == ["a", "b"]


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds("12") == 12
    assert retry_after_seconds("") is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
