"""What the blob store and the kit need from wherever a kit's bytes come from: a protocol.

Three sources implement it, structurally (none inherits from it): the registry client
(:class:`~modelkitfs.registry.RegistryClient`, over the network), an OCI layout folder and kit's
local storage (:class:`~modelkitfs.registry.LayoutSource`, on this machine). Test doubles live
beside it in :mod:`modelkitfs.registry.testing`. The types it speaks in (:class:`Manifest`,
:class:`FetchStats`, :data:`Deliver`) are defined here, for its implementations to import. The
differences the store cares about are properties of the source, never tests of its type:

- ``in_place``: its blobs lie complete and verified on this machine; they are read where they
  are and never copied into the block cache (kit's storage);
- ``ignores_range``: hosts of the source that answered a range request with the whole blob;
  once there is one, a blob is best read from its start to its end, once (issue 18, case 7).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

Deliver = Callable[[memoryview], None]  # takes each piece of a range as it arrives

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Manifest:
    """A manifest (or index) as the source sent it, digest verified."""

    digest: str
    media_type: str
    raw: bytes


@dataclass
class FetchStats:
    """What a source pulled; shown by the demo and ``getfattr``, and read by the metrics at
    each scrape."""

    requests: int = 0
    blob_bytes: int = 0
    ranges: int = 0
    retries: int = 0
    statuses: dict[int, int] = field(default_factory=dict)  # answers by HTTP status
    # Seconds from sending a request to having its answer read, in LATENCY_BUCKETS (the last
    # counts what took longer than them all).
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def answered(self, status: int, seconds: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class BlobSource(Protocol):
    """Manifests, small blobs and byte ranges of blobs, by repository and digest."""

    @property
    def registry(self) -> str:
        """The name messages give the source (a registry host, a layout folder)."""
        ...

    @property
    def in_place(self) -> bool:
        """Whether blobs are read where they lie (complete, verified): never cached."""
        ...

    @property
    def ignores_range(self) -> Collection[str]:
        """Hosts that answered a range with the whole blob (empty when ranges are honoured)."""
        ...

    @property
    def stats(self) -> FetchStats:
        """What the source has fetched so far."""
        ...

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        """A manifest or index by tag or digest, verified."""
        ...

    async def get_blob(self, repository: str, digest: str, size: int | None = None) -> bytes:
        """A small blob (a config) whole, verified."""
        ...

    async def get_range(self, repository: str, digest: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a blob in one buffer (not verified: the store checks)."""
        ...

    async def deliver_range(
        self, repository: str, digest: str, start: int, end: int, piece: int, deliver: Deliver
    ) -> None:
        """Bytes ``[start, end)`` of a blob (not verified: the store checks), handed to
        ``deliver`` on the event loop as they arrive, in order, in buffers of ``piece`` bytes
        (the last one shorter), each once: a transfer cut short resumes after the last buffer
        delivered. When it raises, what was delivered is a prefix of the range."""
        ...

    async def aclose(self) -> None: ...


class ForwardingSource:
    """A source that passes everything to ``inner``: a wrapper (configs kept in the cache, a
    source failing on demand) overrides what it changes and inherits the rest."""

    inner: BlobSource

    def __init__(self, inner: BlobSource) -> None:
        self.inner = inner

    @property
    def registry(self) -> str:
        return self.inner.registry

    @property
    def in_place(self) -> bool:
        return self.inner.in_place

    @property
    def ignores_range(self) -> Collection[str]:
        return self.inner.ignores_range

    @property
    def stats(self) -> FetchStats:
        return self.inner.stats

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        return await self.inner.get_manifest(repository, identifier)

    async def get_blob(self, repository: str, digest: str, size: int | None = None) -> bytes:
        return await self.inner.get_blob(repository, digest, size)

    async def get_range(self, repository: str, digest: str, start: int, end: int) -> bytes:
        return await self.inner.get_range(repository, digest, start, end)

    async def deliver_range(
        self, repository: str, digest: str, start: int, end: int, piece: int, deliver: Deliver
    ) -> None:
        await self.inner.deliver_range(repository, digest, start, end, piece, deliver)

    async def aclose(self) -> None:
        await self.inner.aclose()
