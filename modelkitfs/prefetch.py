"""``modelkitfs prefetch``: fill the shared cache with a kit before mounts need it.

Layer by layer (only those the filters select), everything a mount would fetch lazily is fetched
now and verified: a job started later on this machine mounts and reads without the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from modelkitfs.blobs import DiskCache
from modelkitfs.errors import ModelKitFSError
from modelkitfs.options import MountOptions
from modelkitfs.reference import parse_reference
from modelkitfs.sources import Sources

PROGRESS_EVERY = 0.25  # seconds


@dataclass
class Progress:
    reference: str
    layers_done: int
    layers: int
    bytes_done: int  # layers finished plus what is downloaded of the current one
    total_bytes: int
    downloaded: int
    elapsed: float


async def prefetch(
    reference: str,
    options: MountOptions,
    report: Callable[[Progress], None] = lambda progress: None,
) -> Progress:
    """Fetch and verify every selected layer of ``reference`` into the cache."""
    ref = parse_reference(reference)
    options.check()
    cache = DiskCache(options.cache_dir or "")
    if (fault := cache.probe_write()) is not None:  # nothing could be prefetched into it
        raise ModelKitFSError(cache.health.error_message("prefetch into", fault))
    cache.process.release()
    started = time.monotonic()
    async with Sources(options) as sources:
        kit = await sources.open_kit(ref)
        layers = kit.tree.layers
        state = Progress(str(ref), 0, len(layers), 0, sum(x.archive.size for x in layers), 0, 0.0)

        def update(done_before: int, fetched_before: int, layer_size: int) -> None:
            state.downloaded = sources.fetched_bytes
            current = min(state.downloaded - fetched_before, layer_size)
            state.bytes_done = done_before + current
            state.elapsed = time.monotonic() - started
            report(state)

        try:
            for layer in layers:
                done_before, fetched_before = state.bytes_done, sources.fetched_bytes
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        _tick, update, done_before, fetched_before, layer.archive.size
                    )
                    await layer.archive.prefetch()
                    nursery.cancel_scope.cancel()
                state.layers_done += 1
                update(done_before + layer.archive.size, sources.fetched_bytes, 0)
        finally:
            await kit.tree.aclose()
    return state


async def _tick(update: Callable[[int, int, int], None], *args: int) -> None:
    while True:
        update(*args)
        await trio.sleep(PROGRESS_EVERY)
