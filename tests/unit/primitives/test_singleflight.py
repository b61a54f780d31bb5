"""The keyed single flight: one run per key at a time, its outcome shared or only waited for,
nothing kept after landing, a cancelled runner's waiters running the work themselves."""

from __future__ import annotations

import trio
import trio.testing

from modelkitfs.primitives.singleflight import WAITED, SingleFlight


class Work:
    """Counts its runs; each run waits for ``release`` and then returns or raises."""

    def __init__(self, error: Exception | None = None) -> None:
        self.runs = 0
        self.release = trio.Event()
        self.error = error

    async def __call__(self, value: str) -> str:
        self.runs += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return f"{value}#{self.runs}"


async def gather(flight: SingleFlight[str, str], work: Work, calls: int, method: str) -> list:
    results: list = []

    async def call(value: str) -> None:
        try:
            results.append(await getattr(flight, method)("key", work, value))
        except ValueError as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        for n in range(calls):
            nursery.start_soon(call, f"caller{n}")
        await trio.testing.wait_all_tasks_blocked()
        work.release.set()
    return results


def test_callers_during_a_flight_share_its_one_run() -> None:
    work = Work()
    results = trio.run(gather, SingleFlight(), work, 5, "run")
    assert work.runs == 1 and len(results) == 5 and len(set(results)) == 1


def test_an_error_is_shared_by_every_waiter() -> None:
    error = ValueError("registry down")
    work = Work(error)
    results = trio.run(gather, SingleFlight(), work, 4, "run")
    assert work.runs == 1 and results == [error] * 4


def test_waiters_of_run_or_wait_only_wait() -> None:
    work = Work()
    results = trio.run(gather, SingleFlight(), work, 3, "run_or_wait")
    assert work.runs == 1
    assert results.count(WAITED) == 2
    assert next(r for r in results if r is not WAITED).endswith("#1")


def test_run_or_wait_waits_for_a_failed_flight_without_its_error() -> None:
    work = Work(ValueError("boom"))
    results = trio.run(gather, SingleFlight(), work, 3, "run_or_wait")
    assert work.runs == 1
    assert results.count(WAITED) == 2
    assert [type(r) for r in results if r is not WAITED] == [ValueError]


def test_nothing_is_kept_once_a_flight_lands() -> None:
    async def main() -> list[str]:
        flight: SingleFlight[str, str] = SingleFlight()
        work = Work()
        work.release.set()
        return [await flight.run("key", work, "a"), await flight.run("key", work, "b")]

    assert trio.run(main) == ["a#1", "b#2"]


def test_keys_fly_apart() -> None:
    async def main() -> int:
        flight: SingleFlight[str, str] = SingleFlight()
        work = Work()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flight.run, "one", work, "x")
            nursery.start_soon(flight.run, "two", work, "y")
            await trio.testing.wait_all_tasks_blocked()
            runs = work.runs
            work.release.set()
        return runs

    assert trio.run(main) == 2


def test_a_cancelled_runner_leaves_its_waiters_to_run_the_work() -> None:
    async def main() -> tuple[str, int]:
        flight: SingleFlight[str, str] = SingleFlight()
        work = Work()
        got: list[str] = []

        async def waiter() -> None:
            got.append(await flight.run("key", work, "waiter"))

        runner_scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_in_scope, runner_scope, flight, work)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            runner_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            work.release.set()
        return got[0], work.runs

    assert trio.run(main) == ("waiter#2", 2)


async def _in_scope(scope: trio.CancelScope, flight: SingleFlight[str, str], work: Work) -> None:
    with scope:
        await flight.run("key", work, "runner")
    assert scope.cancelled_caught
