"""When to try a failed request again, and how long to wait first.

A registry under load answers 5xx or 429 in bursts, and links drop connections; a job that reads
for hours must ride that out, yet a read must not wait forever. So each request gets a budget:
at most :data:`MAX_ATTEMPTS` attempts, none started after its deadline. Waits grow exponentially
with jitter (so that many readers failing together do not retry together), and a server's
``Retry-After`` is honoured: waited for when it fits in the budget, else the request fails at
once with the reason rather than after a pointless wait.
"""

from __future__ import annotations

import email.utils
import random
import time

import trio

MAX_ATTEMPTS = 8
FIRST_DELAY = 0.25
MAX_DELAY = 8.0


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
    """The attempts left to one request. Create it when the request starts."""

    def __init__(self, seconds: float, attempts: int = MAX_ATTEMPTS) -> None:
        self.deadline = trio.current_time() + seconds
        self.attempts = attempts
        self.made = 1
        self.refusal = ""  # why the last call to :meth:`pause` said no

    async def pause(self, retry_after: float | None = None) -> bool:
        """Wait before the next attempt and return True; or return False at once when no
        attempt is left (then :attr:`refusal` says why)."""
        if self.made >= self.attempts:
            self.refusal = f"gave up after {self.made} attempts"
            return False
        ceiling = min(MAX_DELAY, FIRST_DELAY * 2 ** (self.made - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        left = self.deadline - trio.current_time()
        if delay > left:
            asked = f"the registry asked to wait {retry_after:.0f} s; " if retry_after else ""
            self.refusal = f"{asked}gave up after {self.made} attempts, at the deadline"
            return False
        await trio.sleep(delay)
        self.made += 1
        return True
