"""One mechanism for "many want it, one does it": a keyed single flight.

Many readers of a mount want the same thing at the same moment (a token after it expired, a
redirect that went stale, a block, a layer's index). The first caller for a key runs the work;
callers that come while it runs wait for it and share its result or its error, so a burst costs
one request. Nothing is cached once the flight lands: the next caller starts a new one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class _Flight(Generic[T]):
    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.landed = False  # with a value or an error; else its runner was cancelled


class SingleFlight(Generic[K, T]):
    """Flights by key. A flight whose runner is cancelled tells its waiters nothing: they run
    the work themselves (cancellation belongs to the runner, not to them)."""

    def __init__(self) -> None:
        self._flights: dict[K, _Flight[T]] = {}

    async def run(self, key: K, work: Callable[..., Awaitable[T]], *args: Any) -> T:
        while (flight := self._flights.get(key)) is not None:
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.landed:
                return flight.value  # type: ignore[return-value]  # T, set with landed
        self._flights[key] = flight = _Flight()
        try:
            value = await work(*args)
        except trio.Cancelled:
            raise  # its waiters find no result and run the work themselves
        except BaseException as exc:
            flight.error, flight.landed = exc, True
            raise
        else:
            flight.value, flight.landed = value, True
            return value
        finally:
            del self._flights[key]
            flight.done.set()
