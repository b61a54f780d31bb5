"""Test doubles for the range transport, beside the interface they stand for (as httpx ships
``MockTransport``): blobs served from memory, and a transport that fails chosen requests the
way a network does (as Mountpoint-s3's ``failure_client`` wraps its mock client). With them the
client's retries, resumption, redirects and 206 checks run in milliseconds, without sockets."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from modelkitfs.errors import TransientError
from modelkitfs.registry.ranges import RangeResult


@dataclass
class Served:
    """One request the double answered."""

    url: str
    headers: dict[str, str]
    start: int
    end: int


@dataclass
class MemoryRanges:
    """A :class:`~modelkitfs.registry.range_transport.RangeTransport` over ``blobs`` (URL path
    -> bytes); ``redirects`` (URL path -> absolute URL) answers 307s."""

    blobs: dict[str, bytes]
    redirects: dict[str, str] = field(default_factory=dict)
    served: list[Served] = field(default_factory=list)

    async def get(
        self,
        url: str,
        headers: dict[str, str],
        start: int,
        end: int,
        piece: int,
        deadline: float,
    ) -> RangeResult:
        await trio.sleep(0)
        self.served.append(Served(url, headers, start, end))
        path = urllib.parse.urlsplit(url).path
        if path in self.redirects:
            return RangeResult(307, url, location=self.redirects[path])
        if path not in self.blobs:
            return RangeResult(404, url)
        data = self.blobs[path]
        pieces = [bytearray(data[i : min(i + piece, end)]) for i in range(start, end, piece)]
        return RangeResult(206, url, pieces)

    async def aclose(self) -> None:
        pass


Fault = Callable[[RangeResult], RangeResult] | Exception


@dataclass
class FailingRanges:
    """Wraps a transport and breaks the requests numbered in ``faults`` (1 for the first):
    an exception is raised instead of asking, a function turns the real answer into a broken
    one (see :func:`cut`, :func:`status`, :func:`lie`)."""

    inner: MemoryRanges
    faults: dict[int, Fault]
    count: int = 0

    async def get(
        self,
        url: str,
        headers: dict[str, str],
        start: int,
        end: int,
        piece: int,
        deadline: float,
    ) -> RangeResult:
        self.count += 1
        fault = self.faults.get(self.count)
        if isinstance(fault, Exception):
            self.inner.served.append(Served(url, headers, start, end))
            raise fault
        result = await self.inner.get(url, headers, start, end, piece, deadline)
        return fault(result) if fault is not None else result

    async def aclose(self) -> None:
        pass


def cut(after: int) -> Callable[[RangeResult], RangeResult]:
    """The transfer stops after ``after`` bytes."""

    def apply(result: RangeResult) -> RangeResult:
        data = bytearray(b"".join(result.data))[:after]
        return RangeResult(result.status, result.url, [data], broken="closed by the server")

    return apply


def status(code: int, retry_after: str = "") -> Callable[[RangeResult], RangeResult]:
    return lambda result: RangeResult(code, result.url, retry_after=retry_after)


def lie(problem: str) -> Callable[[RangeResult], RangeResult]:
    """A 206 whose headers say another range."""
    return lambda result: RangeResult(206, result.url, problem=problem)


def reset() -> TransientError:
    return TransientError("connection reset by peer")
