"""Opening a blob store for a unit test: over any source and cache, in a nursery of its own
that the test's end joins (as a session's end joins the store's background work)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import trio

from modelkitfs.blobs import BlobStore
from modelkitfs.cache import BlockCache
from modelkitfs.registry.source import BlobSource
from modelkitfs.registry.testing import MemorySource

BLOCK = 64 * 1024


class OneBlob(MemorySource):
    """A source serving one blob of random bytes, counting the bytes it sends."""

    def __init__(self, size: int = 40 * BLOCK + 3, seed: int = 5, **options: Any) -> None:
        super().__init__(**options)
        self.data = np.random.default_rng(seed).bytes(size)
        self.digest = self.add(self.data)
        self.size = size


@asynccontextmanager
async def opened(
    source: BlobSource, cache: BlockCache, repository: str = "repo", **options: Any
) -> AsyncIterator[BlobStore]:
    """A store of ``repository`` with 64 KiB blocks and 4 of them in memory; on leaving,
    its writes and verifications are joined, its fetching ahead stopped."""
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        store = BlobStore(
            source,
            repository,
            cache,
            nursery,
            block_size=BLOCK,
            memory_bytes=options.pop("memory_bytes", 4 * BLOCK),
            **options,
        )
        try:
            yield store
        except Exception as exc:  # the test's own error: raised as itself, not in a group
            error = exc
        finally:
            store.stop_ahead()
            await store.flush()
    if error is not None:
        raise error
