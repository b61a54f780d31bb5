"""One mechanism for "many want it, one does it": a keyed single flight.

Many readers of a mount want the same thing at the same moment (a token after it expired, a
redirect that went stale, a layer's index, a safetensors header). The first caller for a key
runs the work; callers that come while it runs wait for it, so a burst costs one request.
Nothing is kept once the flight lands: the next caller starts a new one.

Waiters either share the flight's outcome (:meth:`SingleFlight.run`: everyone wanted the same
value) or only wait for it to land and look again at what it left behind
(:meth:`SingleFlight.run_or_wait`: the runner's answer is its own, a range of a blob say, while
the state it leaves, a resolved redirect, serves the others).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, Literal, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Waited(enum.Enum):
    """What :meth:`SingleFlight.run_or_wait` returns to a caller that waited for another's
    flight."""

    WAITED = "waited"


WAITED: Literal[Waited.WAITED] = Waited.WAITED


class _Flight(Generic[T]):
    """One run and what it came to, for every waiter (an ``outcome.Outcome`` would do, but
    it may be unwrapped once only)."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.landed = False  # with a value or an error, not cancelled
        self.value: T | None = None
        self.error: BaseException | None = None

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # landed: the work's own T


class SingleFlight(Generic[K, T]):
    """Flights by key. A flight whose runner is cancelled tells its waiters nothing: with
    :meth:`run` they run the work themselves (cancellation belongs to the runner, not to
    them)."""

    def __init__(self) -> None:
        self._flights: dict[K, _Flight[T]] = {}

    async def run(self, key: K, work: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await work(*args)``, unless a flight for ``key`` is under way: then its result, or
        its error raised again."""
        while (flight := self._flights.get(key)) is not None:
            await flight.done.wait()
            if flight.landed:
                return flight.result()
        return await self._lead(key, work, args)

    async def run_or_wait(
        self, key: K, work: Callable[..., Awaitable[T]], *args: Any
    ) -> T | Literal[Waited.WAITED]:
        """``await work(*args)`` when no flight for ``key`` is under way; else wait until it
        lands, however it lands, and return :data:`WAITED`."""
        if (flight := self._flights.get(key)) is not None:
            await flight.done.wait()
            return WAITED
        return await self._lead(key, work, args)

    async def _lead(self, key: K, work: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
        self._flights[key] = flight = _Flight[T]()
        try:
            value = await work(*args)
        except trio.Cancelled:
            raise  # its waiters find no result and look again
        except BaseException as exc:
            flight.error, flight.landed = exc, True
            raise
        else:
            flight.value, flight.landed = value, True
            return value
        finally:
            del self._flights[key]
            flight.done.set()
