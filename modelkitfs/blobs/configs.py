"""Configs kept in the block cache, so that mounting a kit the machine has mounted before asks
the network for its manifest alone.

:class:`CachedConfigs` wraps a network :class:`~modelkitfs.registry.source.BlobSource` and is
one itself: small whole blobs (configs) are looked up in the cache's sidecar files first
(checked against their digest again: the cache is shared and may be damaged), else fetched,
verified by the source and saved. Everything else passes through (manifests by digest are
kept by the registry client itself).
"""

from __future__ import annotations

import logging

import trio

from modelkitfs.cache import BlockCache
from modelkitfs.primitives.digests import sha256_digest
from modelkitfs.registry.source import BlobSource, ForwardingSource

log = logging.getLogger(__name__)

WHOLE_BLOB = "blob"  # the sidecar file a small blob is kept in


class CachedConfigs(ForwardingSource):
    def __init__(self, source: BlobSource, cache: BlockCache) -> None:
        super().__init__(source)
        self.cache = cache

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
