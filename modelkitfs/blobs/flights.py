"""Blocks on their way, so that each is fetched once however many readers want it at once.

A flight is reserved for a block before anything is asked for it (from the disk cache or the
source), so that a reader arriving meanwhile waits for that one fetch rather than starting its
own. Reserving is per block, many at a time (a run of adjacent blocks goes out as one range
request), which is why this is not the keyed
:class:`~modelkitfs.primitives.singleflight.SingleFlight`: one piece of work lands many keys,
and a flight carries the block itself to its waiters (a cache that cannot be written keeps it
nowhere else).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from modelkitfs.cache import BlockMemory
from modelkitfs.primitives.buffers import Buffer

Key = tuple[str, int]  # (digest, block index)


@dataclass
class Flight:
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    data: Buffer | None = None  # the block, once downloaded


class Flights:
    def __init__(self) -> None:
        self._flights: dict[Key, Flight] = {}

    def get(self, key: Key) -> Flight | None:
        return self._flights.get(key)

    def __contains__(self, key: Key) -> bool:
        return key in self._flights

    def reserve(
        self, digest: str, first: int, last: int, present: BlockMemory | None = None
    ) -> dict[int, Flight]:
        """Flights for blocks ``first`` to ``last`` neither ``present`` (in memory) nor on
        their way, registered at once so that other readers in this process wait on them."""
        flights = {}
        for index in range(first, last + 1):
            key = (digest, index)
            if (present is None or key not in present) and key not in self._flights:
                flights[index] = self._flights[key] = Flight()
        return flights

    def land(
        self, digest: str, flights: dict[int, Flight], error: BaseException | None = None
    ) -> None:
        """End flights: their readers take the block (``data``, or from memory), or look
        again; with ``error``, they fail with it."""
        for index, flight in flights.items():
            if self._flights.get((digest, index)) is flight:
                del self._flights[digest, index]
            if not flight.done.is_set():
                flight.error = error
                flight.done.set()


def for_waiters(exc: BaseException) -> BaseException | None:
    """What readers waiting on a failed flight are told: its error, but not the cancellation
    of the task that flew it (an index walk's fetching ahead, say): they look again."""
    return None if isinstance(exc, trio.Cancelled) else exc
