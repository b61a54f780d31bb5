"""Configs kept in the block cache, so that mounting a kit the machine has mounted before asks
the network for its manifest alone.

:class:`CachedConfigs` wraps a network :class:`~modelkitfs.registry.source.BlobSource` and is
one itself: small whole blobs (configs) are looked up in the cache's sidecar files first
(checked against their digest again: the cache is shared and may be damaged), else fetched,
verified by the source and saved. Everything else passes through. Manifests are never cached:
tags move.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import trio

from modelkitfs.blobs.block_cache import BlockCache
from modelkitfs.digests import sha256_digest
from modelkitfs.registry.client import FetchStats, Manifest
from modelkitfs.registry.source import BlobSource, Buffer

log = logging.getLogger(__name__)

WHOLE_BLOB = "blob"  # the sidecar file a small blob is kept in


class CachedConfigs:
    def __init__(self, source: BlobSource, cache: BlockCache) -> None:
        self.inner = source
        self.cache = cache

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
        cached = await trio.to_thread.run_sync(self.cache.read_meta, digest, WHOLE_BLOB)
        if (
            cached is not None
            and (size is None or len(cached) == size)
            and sha256_digest(cached) == digest
        ):
            return cached
        data = await self.inner.get_blob(repository, digest, size)
        try:
            await trio.to_thread.run_sync(self.cache.write_meta, digest, WHOLE_BLOB, data)
        except OSError as exc:  # the cache warned once: it cannot be written
            log.debug("could not keep blob %s in the cache: %s", digest, exc)
        return data

    async def get_range(self, repository: str, digest: str, start: int, end: int) -> bytes:
        return await self.inner.get_range(repository, digest, start, end)

    async def get_range_pieces(
        self, repository: str, digest: str, start: int, end: int, piece: int
    ) -> Sequence[Buffer]:
        return await self.inner.get_range_pieces(repository, digest, start, end, piece)

    async def aclose(self) -> None:
        await self.inner.aclose()
