"""One retry policy for every request the client makes, driven by the type of the failure.

A registry under load answers 5xx or 429 in bursts, links drop connections, object stores and
token services blip; a job that reads for hours must ride that out, yet a read must not wait
forever. So each request gets a budget: at most :data:`MAX_ATTEMPTS` attempts, none started
after its deadline. What is retried is decided by type, never by message text: a
:class:`~modelkitfs.errors.TransientError` is, anything else (404, a refused login, a digest
mismatch) is final. Waits grow exponentially with jitter (so that many readers failing together
do not retry together), and a server's ``Retry-After`` is honoured: waited for when it fits in
the budget, else the request fails at once with the reason rather than after a pointless wait.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from modelkitfs.errors import GaveUp, TransientError, Unreachable

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
FIRST_DELAY = 0.25
MAX_DELAY = 8.0
LAST_ATTEMPT = 0.5  # seconds left, at least, to the attempt made at the deadline

T = TypeVar("T")


def retry_after_seconds(value: str) -> float | None:
    """The wait a ``Retry-After`` header asks for (seconds, or an HTTP date), or None."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RetryBudget:
    """The attempts left to one request. Create it when the request starts: its deadline is
    ``seconds`` from then. ``unreachable_attempts`` bounds the attempts when no connection can
    be made at all (a mount given a wrong address should say so at once, while a read in a
    long-lived mount rides out a registry restart); ``grace``: seconds the attempts may go on
    past ``seconds`` (a download shared by readers that wait ``seconds`` each)."""

    def __init__(
        self,
        seconds: float,
        attempts: int = MAX_ATTEMPTS,
        *,
        unreachable_attempts: int | None = None,
        grace: float = 0.0,
    ) -> None:
        self.seconds = seconds
        self.deadline = trio.current_time() + seconds + grace
        self.attempts = attempts
        self.unreachable_attempts = unreachable_attempts or attempts
        self.made = 1
        self.refusal = ""  # why the last call to :meth:`pause` said no

    async def pause(self, failure: TransientError) -> bool:
        """Wait before the next attempt and return True; or return False at once when no
        attempt is left (then :attr:`refusal` says why)."""
        limit = self.unreachable_attempts if isinstance(failure, Unreachable) else self.attempts
        if self.made >= limit:
            self.refusal = f"gave up after {self.made} attempts"
            return False
        ceiling = min(MAX_DELAY, FIRST_DELAY * 2 ** (self.made - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        retry_after = failure.retry_after
        if retry_after is not None:
            delay = max(delay, retry_after)
        left = self.deadline - trio.current_time()
        if left <= 0 or (retry_after is not None and retry_after > left):
            asked = f"the server asked to wait {retry_after:.0f} s; " if retry_after else ""
            self.refusal = (
                f"{asked}gave up after {self.made} attempts, at the deadline of "
                f"{self.seconds:g} s (--timeout)"
            )
            return False
        # A last attempt at the deadline rather than giving up early: readers share this
        # request, and one that gave up early would make the next one start from scratch.
        await trio.sleep(max(0.0, min(delay, left - LAST_ATTEMPT)))
        self.made += 1
        return True


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    budget: RetryBudget,
    what: str,
    *,
    on_failure: Callable[[TransientError], None] | None = None,
) -> T:
    """``await attempt()`` until it succeeds, fails for good, or the budget runs out (then
    :class:`GaveUp`, naming the last failure, whose message says what failed; ``what`` names
    the request in the log of each retry). ``on_failure`` sees each transient failure
    before the pause (to keep the bytes a cut transfer delivered, say)."""
    while True:
        try:
            return await attempt()
        except TransientError as exc:
            failure = exc
        if on_failure is not None:
            on_failure(failure)
        if not await budget.pause(failure):
            raise GaveUp(f"{failure} ({budget.refusal})", failure) from failure
        log.warning("%s: %s; retrying (attempt %d)", what, failure, budget.made)
