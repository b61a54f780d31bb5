"""Test doubles of :class:`~modelkitfs.registry.source.BlobSource`, beside the protocol (as
Mountpoint-s3 ships a mock client and a ``failure_client`` beside ``ObjectClient``): blobs and
manifests served from memory, counting what they send, and a wrapper that breaks chosen
requests. With them the block store runs in milliseconds, without sockets or a kernel mount.

:class:`MemorySource` can also play a server that ignores ``Range`` (``ignoring=True``), as the
real transport meets one: a request carries on the blob's whole answer where the previous one
stopped, if it starts there or later (costing the bytes in between); a request from the start
costs the bytes up to its end; any other raises :class:`~modelkitfs.errors.RangeIgnored`,
keeping the answer open at the start. ``sent`` counts what such a server would send.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from modelkitfs.digests import sha256_digest
from modelkitfs.errors import NotFound, RangeIgnored
from modelkitfs.registry.client import FetchStats, Manifest
from modelkitfs.registry.ranges import Deliver
from modelkitfs.registry.source import ForwardingSource


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


Fault = Exception | Callable[[list[memoryview]], list[memoryview]]


class FailingSource(ForwardingSource):
    """Wraps a :class:`MemorySource` and breaks the range requests numbered in ``faults`` (1 for
    the first): an exception is raised instead of answering, a function turns the real pieces
    into broken ones, delivered as the answer (see :func:`flip`, :func:`short`)."""

    def __init__(self, inner: MemorySource, faults: dict[int, Fault]) -> None:
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
