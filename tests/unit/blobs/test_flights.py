"""Flights of blocks, and cutting and joining blocks."""

from __future__ import annotations

import trio

from modelkitfs.blobs.flights import Flights, for_waiters
from modelkitfs.cache import BlockMemory


def test_reserving_skips_blocks_in_memory_or_on_their_way() -> None:
    async def main() -> None:
        flights = Flights()
        memory = BlockMemory(1 << 20)
        memory.put(("d", 2), b"x")
        first = flights.reserve("d", 0, 1, memory)
        assert sorted(first) == [0, 1]
        assert sorted(flights.reserve("d", 0, 3, memory)) == [3]
        flights.land("d", first)
        assert all(f.done.is_set() and f.error is None for f in first.values())
        assert ("d", 0) not in flights
        assert sorted(flights.reserve("d", 0, 1, memory)) == [0, 1]

    trio.run(main)


def test_waiters_get_the_error_but_not_the_cancellation_of_the_flier() -> None:
    async def main() -> None:
        flights = Flights()
        mine = flights.reserve("d", 0, 0)
        flights.land("d", mine, for_waiters(OSError("reset")))
        assert isinstance(mine[0].error, OSError)
        assert for_waiters(trio.Cancelled._create()) is None

    trio.run(main)
