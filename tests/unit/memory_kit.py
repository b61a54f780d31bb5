"""A ModelKit opened from a registry in memory: the kit, archive and blob layers as a mount
runs them, without sockets or a kernel. The one place the unit tests of kit/ and fuse/ build a
blob store, so that a change to how stores are made is one change here; and the one place a
session (:class:`~modelkitfs.session.sources.Sources`, under
:class:`~modelkitfs.reader.KitReader`) is pointed at a registry in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelkitfs.blobs import Blob, BlobStore
from modelkitfs.cache import DiskCache
from modelkitfs.kit import ModelKit, open_modelkit, parse_filters
from modelkitfs.primitives.digests import sha256_digest
from modelkitfs.reference import parse_reference
from modelkitfs.registry.testing import MemoryRegistry
from tests.support.kitbuilder import Artifact
from tests.unit.blobs.stores import opened

REPOSITORY = "team/kit"
BLOCK = 64 * 1024


@dataclass
class MemoryKit:
    kit: ModelKit
    registry: MemoryRegistry
    store: BlobStore

    def requests_for(self, digest: str) -> int:
        """Range requests the registry answered for blob ``digest``."""
        return sum(1 for s in self.registry.ranges.served if s.url.endswith(digest))


@dataclass
class MemoryBlob:
    blob: Blob
    registry: MemoryRegistry
    store: BlobStore

    @property
    def requests(self) -> int:
        """Range requests the registry answered."""
        return len(self.registry.ranges.served)


@asynccontextmanager
async def registry_store(cache: Path, registry: MemoryRegistry) -> AsyncIterator[BlobStore]:
    """A store of ``REPOSITORY`` in ``registry`` (``reg.test``), read through the real client,
    caching under ``cache``."""
    client = registry.client()
    disk = DiskCache(cache)
    try:
        async with opened(client, disk, REPOSITORY, memory_bytes=64 * BLOCK) as store:
            yield store
    finally:
        await client.aclose()
        disk.pins.close()
        disk.process.release()


@asynccontextmanager
async def memory_blob(cache: Path, data: bytes) -> AsyncIterator[MemoryBlob]:
    """``data`` as a blob in a registry in memory, read through a store caching under
    ``cache``."""
    registry = MemoryRegistry()
    digest = sha256_digest(data)
    registry.ranges.blobs[f"/v2/{REPOSITORY}/blobs/{digest}"] = data
    async with registry_store(cache, registry) as store:
        yield MemoryBlob(store.blob(digest, len(data)), registry, store)


@asynccontextmanager
async def memory_kit(
    cache: Path, artifact: Artifact, filters: Sequence[str] = ()
) -> AsyncIterator[MemoryKit]:
    """``artifact`` pushed to a registry in memory and opened as a mount opens it, its blocks
    cached under ``cache``."""
    registry = MemoryRegistry()
    registry.push(REPOSITORY, "v1", artifact.manifest, artifact.media_type, artifact.blobs)
    reference = parse_reference(f"reg.test/{REPOSITORY}:v1")
    async with registry_store(cache, registry) as store:
        kit = await open_modelkit(lambda ref: store, reference, filters=parse_filters(filters))
        try:
            yield MemoryKit(kit, registry, store)
        finally:
            await kit.tree.aclose()


def sessions_reach(registry: MemoryRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every session the test opens talks to ``registry`` for whatever registry a reference
    names, through the real client (as :meth:`MemoryRegistry.client` makes it)."""
    monkeypatch.setattr(
        "modelkitfs.session.sources.RegistryClient", lambda name, _: registry.client(name)
    )
