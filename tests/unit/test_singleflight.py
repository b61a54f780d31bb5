"""One flight per key: waiters share its value or its error, however many they are."""

from __future__ import annotations

import trio
import trio.testing

from modelkitfs.singleflight import SingleFlight


def test_every_waiter_shares_the_value_and_the_error() -> None:
    async def main() -> None:
        flights: SingleFlight[str, int] = SingleFlight()
        calls: list[str] = []
        results: list[object] = []

        async def work(key: str) -> int:
            calls.append(key)
            await trio.sleep(1)
            if key == "bad":
                raise ValueError("no")
            return 7

        async def ask(key: str) -> None:
            try:
                results.append(await flights.run(key, work, key))
            except ValueError as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ask, "good")
                nursery.start_soon(ask, "bad")
        assert sorted(calls) == ["bad", "good"]
        assert results.count(7) == 5
        assert sum(isinstance(r, ValueError) for r in results) == 5
        assert await flights.run("good", work, "good") == 7  # landed: a new flight
        assert calls.count("good") == 2

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_waiters_of_a_cancelled_flight_run_the_work_themselves() -> None:
    async def main() -> None:
        flights: SingleFlight[str, str] = SingleFlight()
        runs: list[int] = []
        got: list[str] = []

        async def work() -> str:
            runs.append(1)
            await trio.sleep(1)
            return "done"

        async def waiter() -> None:
            got.append(await flights.run("k", work))

        async with trio.open_nursery() as nursery:
            runner = trio.CancelScope()

            async def run_then_be_cancelled() -> None:
                with runner:
                    await flights.run("k", work)

            nursery.start_soon(run_then_be_cancelled)
            await trio.sleep(0.1)
            nursery.start_soon(waiter)
            await trio.sleep(0.1)
            runner.cancel()
        assert got == ["done"] and len(runs) == 2

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
