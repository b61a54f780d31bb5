"""Background work with an owner: joined, cancelled, and a failure logged, never spread."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from modelkitfs.blobs.jobs import Jobs


def test_join_waits_for_the_jobs_and_for_the_jobs_they_start() -> None:
    done: list[str] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            jobs = Jobs(nursery, "testing")

            async def child() -> None:
                await trio.sleep(2)
                done.append("child")

            async def parent() -> None:
                await trio.sleep(1)
                jobs.start(child)
                done.append("parent")

            jobs.start(parent)
            await jobs.join()
            assert done == ["parent", "child"] and jobs.running == 0
            await jobs.join()  # nothing running: at once

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_failing_job_is_logged_and_the_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            jobs = Jobs(nursery, "writing a block")

            async def fails() -> None:
                raise OSError("disk on fire")

            async def works() -> None:
                await trio.sleep(1)
                done.append("works")

            jobs.start(fails)
            jobs.start(works)
            await jobs.join()

    with caplog.at_level(logging.ERROR):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert done == ["works"]
    assert "writing a block failed unexpectedly" in caplog.text
    assert "disk on fire" in caplog.text


def test_cancel_stops_the_jobs_running_and_not_the_nursery() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            jobs = Jobs(nursery, "fetching ahead")
            jobs.start(trio.sleep_forever)
            jobs.start(trio.sleep_forever)
            await trio.testing.wait_all_tasks_blocked()
            assert jobs.running == 2
            jobs.cancel()
            await jobs.join()
            assert jobs.running == 0
            assert not nursery.cancel_scope.cancel_called

    trio.run(main)
