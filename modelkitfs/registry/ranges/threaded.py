"""Blob ranges through blocking connections in worker threads, seen from the event loop: the
fast path (see :mod:`~modelkitfs.registry.ranges.connections`).

The deadline is enforced from the event loop, which also aborts the transfer when its caller is
cancelled. Pieces cross to the event loop with ``run_sync_soon``, which runs them in order and
before the thread's result, a wake-up per burst.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import threading

import trio

from modelkitfs.registry.network import transport_failure
from modelkitfs.registry.ranges.connections import RangeFetcher, Transfer
from modelkitfs.registry.ranges.exchange import RangeRequest, RangeResult, no_answer
from modelkitfs.registry.source import Deliver
from modelkitfs.registry.status import host


class ThreadedRanges:
    def __init__(self, fetcher: RangeFetcher, threads: trio.CapacityLimiter, plain_http: bool):
        self._fetcher = fetcher
        self._threads = threads
        self._plain_http = plain_http

    async def get(self, request: RangeRequest) -> RangeResult:
        transfer = Transfer()
        failure: BaseException | None = None
        in_thread = dataclasses.replace(request, deliver=_Across(request.deliver))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_abort_at, request.deadline, transfer)
            try:
                result = await trio.to_thread.run_sync(
                    self._fetcher.fetch, in_thread, transfer, limiter=self._threads
                )
            except (OSError, http.client.HTTPException, ValueError) as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is None:
            return result
        if transfer.aborted:
            raise no_answer(request) from None
        raise transport_failure(host(request.url), failure, self._plain_http) from failure

    async def aclose(self) -> None:
        self._fetcher.close()


class _Across:
    """Hands pieces from a worker thread to ``deliver`` on the event loop, in order. A piece
    that comes while earlier ones still wait for the loop joins them rather than waking it
    again: one wake-up per burst, not per piece. Through ``run_sync_soon``, whose callbacks run
    in order, so every piece is delivered before the thread's result arrives."""

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._waiting: collections.deque[memoryview] = collections.deque()
        self._scheduled = False

    def __call__(self, buffer: memoryview) -> None:  # in the worker thread
        with self._lock:
            self._waiting.append(buffer)
            if self._scheduled:
                return
            self._scheduled = True
        self._token.run_sync_soon(self._drain)

    def _drain(self) -> None:  # on the event loop
        while True:
            with self._lock:
                if not self._waiting:
                    self._scheduled = False
                    return
                buffer = self._waiting.popleft()
            self._deliver(buffer)


async def _abort_at(deadline: float, transfer: Transfer) -> None:
    """Abort the transfer at its deadline, or when its caller is cancelled (once it is done,
    aborting does nothing)."""
    try:
        await trio.sleep_until(deadline)
    finally:
        transfer.abort()
