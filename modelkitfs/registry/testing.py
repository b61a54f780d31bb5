"""Test doubles of the registry's two seams, beside the interfaces they stand for (as httpx
ships ``MockTransport``, as Mountpoint-s3 ships a mock client and a ``failure_client`` beside
``ObjectClient``). With them every layer above runs in milliseconds, without sockets or a
kernel mount.

- Of :class:`~modelkitfs.registry.source.BlobSource`, for the block store and above: blobs and
  manifests served from memory, counting what they send (:class:`MemorySource`), and a wrapper
  that breaks chosen requests (:class:`FailingSource`). :class:`MemorySource` can also play a
  server that ignores ``Range`` (``ignoring=True``), as the real transport meets one: a request
  carries on the blob's whole answer where the previous one stopped, if it starts there or
  later (costing the bytes in between); a request from the start costs the bytes up to its
  end; any other raises :class:`~modelkitfs.errors.RangeIgnored`, keeping the answer open at
  the start. ``sent`` counts what such a server would send.
- Of the client's transports, for the client's retries, resumption, redirects and 206 checks:
  blobs served from memory (:class:`MemoryRanges`), a transport that fails chosen requests the
  way a network does (:class:`FailingRanges`), and a whole registry in memory
  (:class:`MemoryRegistry`: documents through ``httpx.MockTransport``, ranges through
  :class:`MemoryRanges`).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
import trio

from modelkitfs.errors import NotFound, RangeIgnored, TransientError
from modelkitfs.primitives.digests import sha256_digest
from modelkitfs.registry.client import RegistryClient
from modelkitfs.registry.network import NetworkOptions
from modelkitfs.registry.ranges import RangeRequest, RangeResult
from modelkitfs.registry.source import Deliver, FetchStats, ForwardingSource, Manifest


@dataclass
class MemorySource:
    """Blobs (digest -> bytes, see :meth:`add`) and manifests (tag or digest -> Manifest)."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, Manifest] = field(default_factory=dict)
    registry: str = "memory.registry"
    in_place: bool = False
    ignoring: bool = False  # answer every range with the blob from its start
    stats: FetchStats = field(default_factory=FetchStats)
    requests: list[tuple[str, int, int]] = field(default_factory=list)  # digest, start, end
    sent: int = 0  # bytes a server would have sent
    _positions: dict[str, int] = field(default_factory=dict)  # where a whole answer stopped

    def add(self, data: bytes) -> str:
        """Serve ``data`` as a blob; its digest."""
        digest = sha256_digest(data)
        self.blobs[digest] = data
        return digest

    def add_manifest(self, document: dict[str, object], tag: str = "latest") -> Manifest:
        raw = json.dumps(document).encode()
        manifest = Manifest(sha256_digest(raw), str(document.get("mediaType", "")), raw)
        self.manifests[tag] = self.manifests[manifest.digest] = manifest
        return manifest

    @property
    def ignores_range(self) -> frozenset[str]:
        return frozenset({self.registry}) if self.ignoring and self.requests else frozenset()

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        await trio.sleep(0)
        if identifier not in self.manifests:
            raise NotFound(f"no manifest {identifier} in {self.registry}/{repository}")
        return self.manifests[identifier]

    async def get_blob(self, repository: str, digest: str, size: int | None = None) -> bytes:
        data = self._blob(repository, digest)
        await trio.sleep(0)
        self.sent += len(data)
        self.stats.blob_bytes += len(data)
        return data

    async def get_range(self, repository: str, digest: str, start: int, end: int) -> bytes:
        pieces: list[memoryview] = []
        await self.deliver_range(repository, digest, start, end, end - start, pieces.append)
        return b"".join(pieces)

    async def deliver_range(
        self, repository: str, digest: str, start: int, end: int, piece: int, deliver: Deliver
    ) -> None:
        data = self._blob(repository, digest)
        await trio.sleep(0)
        self.requests.append((digest, start, end))
        if self.ignoring:
            kept = self._positions.get(digest, -1)
            if 0 <= kept <= start:
                self.sent += end - kept  # carried on the answer kept open
            elif start == 0:
                self.sent += end  # a new answer, read up to the range's end
            else:
                self._positions[digest] = 0  # a new answer, kept open at the blob's start
                raise RangeIgnored(f"{self.registry} answered with the whole blob {digest}")
            self._positions[digest] = end
        else:
            self.sent += end - start
        self.stats.ranges += 1
        self.stats.requests += 1
        self.stats.blob_bytes += end - start
        for i in range(start, end, piece):
            deliver(memoryview(bytearray(data[i : min(i + piece, end)])))

    async def aclose(self) -> None:
        pass

    def _blob(self, repository: str, digest: str) -> bytes:
        if digest not in self.blobs:
            raise NotFound(f"blob {digest} not found in {self.registry}/{repository}")
        return self.blobs[digest]


SourceFault = Exception | Callable[[list[memoryview]], list[memoryview]]


class FailingSource(ForwardingSource):
    """Wraps a :class:`MemorySource` and breaks the range requests numbered in ``faults`` (1 for
    the first): an exception is raised instead of answering, a function turns the real pieces
    into broken ones, delivered as the answer (see :func:`flip`, :func:`short`)."""

    def __init__(self, inner: MemorySource, faults: Mapping[int, SourceFault]) -> None:
        super().__init__(inner)
        self.faults = faults
        self.count = 0

    async def deliver_range(
        self, repository: str, digest: str, start: int, end: int, piece: int, deliver: Deliver
    ) -> None:
        self.count += 1
        fault = self.faults.get(self.count)
        if isinstance(fault, Exception):
            await trio.sleep(0)
            raise fault
        if fault is None:
            return await self.inner.deliver_range(repository, digest, start, end, piece, deliver)
        pieces: list[memoryview] = []
        await self.inner.deliver_range(repository, digest, start, end, piece, pieces.append)
        for broken in fault(pieces):
            deliver(broken)

    async def aclose(self) -> None:
        pass  # the inner source is the test's to close


def flip(at: int = 0) -> Callable[[list[memoryview]], list[memoryview]]:
    """Wrong bytes: byte ``at`` of the answer inverted (a proxy or disk that corrupts)."""

    def apply(pieces: list[memoryview]) -> list[memoryview]:
        pieces[at // len(pieces[0])][at % len(pieces[0])] ^= 0xFF
        return pieces

    return apply


def short(drop: int = 1) -> Callable[[list[memoryview]], list[memoryview]]:
    """An answer ``drop`` bytes shorter than the range (a source that lost its tail)."""
    return lambda pieces: [*pieces[:-1], pieces[-1][:-drop]]


@dataclass
class MemoryRanges:
    """A :class:`~modelkitfs.registry.ranges.RangeTransport` over ``blobs`` (URL path -> bytes);
    ``redirects`` (URL path -> absolute URL) answers 307s; ``served`` lists the requests."""

    blobs: dict[str, bytes]
    redirects: dict[str, str] = field(default_factory=dict)
    served: list[RangeRequest] = field(default_factory=list)

    async def get(self, request: RangeRequest) -> RangeResult:
        await trio.sleep(0)
        self.served.append(request)
        path = urllib.parse.urlsplit(request.url).path
        if path in self.redirects:
            return RangeResult(307, request.url, location=self.redirects[path])
        if path not in self.blobs:
            return RangeResult(404, request.url)
        data = self.blobs[path]
        for i in range(request.start, request.end, request.piece):
            request.deliver(memoryview(bytearray(data[i : min(i + request.piece, request.end)])))
        return RangeResult(206, request.url, request.length)

    async def aclose(self) -> None:
        pass


# Turns the real answer and its pieces into a broken answer and the pieces it delivers.
Breaker = Callable[[RangeResult, list[memoryview]], tuple[RangeResult, list[memoryview]]]
RangesFault = Breaker | Exception


@dataclass
class FailingRanges:
    """Wraps a transport and breaks the requests numbered in ``faults`` (1 for the first):
    an exception is raised instead of asking, a function turns the real answer into a broken
    one (see :func:`cut`, :func:`status`, :func:`lie`)."""

    inner: MemoryRanges
    faults: Mapping[int, RangesFault]
    count: int = 0

    async def get(self, request: RangeRequest) -> RangeResult:
        self.count += 1
        fault = self.faults.get(self.count)
        if isinstance(fault, Exception):
            self.inner.served.append(request)
            raise fault
        if fault is None:
            return await self.inner.get(request)
        pieces: list[memoryview] = []
        answer = await self.inner.get(dataclasses.replace(request, deliver=pieces.append))
        result, pieces = fault(answer, pieces)
        for buffer in pieces:
            request.deliver(buffer)
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
