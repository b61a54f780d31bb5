"""Test doubles for the client's two transports, beside the interfaces they stand for (as httpx
ships ``MockTransport``): blobs served from memory, a transport that fails chosen requests the
way a network does (as Mountpoint-s3's ``failure_client`` wraps its mock client), and a whole
registry in memory (:class:`MemoryRegistry`: documents through ``httpx.MockTransport``, ranges
through :class:`MemoryRanges`). With them the client's retries, resumption, redirects and 206
checks, and every layer above the client, run in milliseconds, without sockets."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import trio

from modelkitfs.digests import sha256_digest
from modelkitfs.errors import TransientError
from modelkitfs.registry.client import RegistryClient
from modelkitfs.registry.ranges import Deliver, RangeResult
from modelkitfs.registry.transport import NetworkOptions


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
        deliver: Deliver,
    ) -> RangeResult:
        await trio.sleep(0)
        self.served.append(Served(url, headers, start, end))
        path = urllib.parse.urlsplit(url).path
        if path in self.redirects:
            return RangeResult(307, url, location=self.redirects[path])
        if path not in self.blobs:
            return RangeResult(404, url)
        data = self.blobs[path]
        for i in range(start, end, piece):
            deliver(memoryview(bytearray(data[i : min(i + piece, end)])))
        return RangeResult(206, url, end - start)

    async def aclose(self) -> None:
        pass


# Turns the real answer and its pieces into a broken answer and the pieces it delivers.
Breaker = Callable[[RangeResult, list[memoryview]], tuple[RangeResult, list[memoryview]]]
Fault = Breaker | Exception


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
        deliver: Deliver,
    ) -> RangeResult:
        self.count += 1
        fault = self.faults.get(self.count)
        if isinstance(fault, Exception):
            self.inner.served.append(Served(url, headers, start, end))
            raise fault
        if fault is None:
            return await self.inner.get(url, headers, start, end, piece, deadline, deliver)
        pieces: list[memoryview] = []
        result, pieces = fault(
            await self.inner.get(url, headers, start, end, piece, deadline, pieces.append),
            pieces,
        )
        for buffer in pieces:
            deliver(buffer)
        result.delivered = sum(len(p) for p in pieces)
        return result

    async def aclose(self) -> None:
        pass


def cut(after: int) -> Breaker:
    """The transfer stops after ``after`` bytes: the pieces that were whole by then go."""

    def apply(
        result: RangeResult, pieces: list[memoryview]
    ) -> tuple[RangeResult, list[memoryview]]:
        whole, total = [], 0
        for buffer in pieces:
            if total + len(buffer) > after:
                break
            whole.append(buffer)
            total += len(buffer)
        return RangeResult(result.status, result.url, broken="closed by the server"), whole

    return apply


def status(code: int, retry_after: str = "") -> Breaker:
    return lambda result, pieces: (RangeResult(code, result.url, retry_after=retry_after), [])


def lie(problem: str) -> Breaker:
    """A 206 whose headers say another range."""
    return lambda result, pieces: (RangeResult(206, result.url, problem=problem), [])


def reset() -> TransientError:
    return TransientError("connection reset by peer")


@dataclass
class MemoryRegistry:
    """A registry in memory: manifests by tag and by digest, blobs whole (documents) or by
    range. ``documents`` lists the paths of the document requests it answered."""

    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path -> raw, type
    ranges: MemoryRanges = field(default_factory=lambda: MemoryRanges({}))
    documents: list[str] = field(default_factory=list)

    def push(
        self, repository: str, tag: str, manifest: bytes, media_type: str, blobs: dict[str, bytes]
    ) -> str:
        """Store a manifest under ``tag`` and its digest, and its blobs (digest -> bytes)."""
        digest = sha256_digest(manifest)
        for identifier in (tag, digest):
            self.manifests[f"/v2/{repository}/manifests/{identifier}"] = (manifest, media_type)
        for blob, data in blobs.items():
            self.ranges.blobs[f"/v2/{repository}/blobs/{blob}"] = data
        return digest

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.documents.append(path)
        if path in self.manifests:
            raw, media_type = self.manifests[path]
            headers = {"Content-Type": media_type, "Docker-Content-Digest": sha256_digest(raw)}
            return httpx.Response(200, headers=headers, content=raw)
        if path in self.ranges.blobs:
            return httpx.Response(200, content=self.ranges.blobs[path])
        return httpx.Response(404)

    def client(self, registry: str = "reg.test", timeout: float = 30) -> RegistryClient:
        """A client of this registry, with no credentials."""
        return RegistryClient(
            registry,
            NetworkOptions(plain_http=True, timeout=timeout),
            credentials=lambda host: None,
            transport=self.ranges,
            http_transport=httpx.MockTransport(self.handle),
        )
