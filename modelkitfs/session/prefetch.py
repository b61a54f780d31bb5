"""``modelkitfs prefetch``: fill the shared cache with a kit before mounts need it.

Layer by layer (only those the filters select), everything a mount would fetch lazily is fetched
now and verified: a job started later on this machine mounts and reads without the network.
Progress is what the cache holds of the layers, not what crossed the network (which counts
manifests, retries and headers too), so it reaches its total only when every layer is in.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from modelkitfs.cache import DiskCache
from modelkitfs.errors import ModelKitFSError
from modelkitfs.reference import parse_reference
from modelkitfs.session.kits import open_kit
from modelkitfs.session.options import MountOptions

PROGRESS_EVERY = 0.25  # seconds


@dataclass(frozen=True)
class LayerDone:
    kind: str
    path: str
    size: int


@dataclass
class Progress:
    reference: str
    layers: int
    total_bytes: int
    cached_before: int = 0  # of the selected layers, before this prefetch began
    layers_done: list[LayerDone] = field(default_factory=list)
    bytes_done: int = 0  # of the selected layers, in the cache now
    downloaded: int = 0  # blob bytes fetched from registries
    elapsed: float = 0.0


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
    async with open_kit(ref, options) as opened:
        sources, layers = opened.sources, opened.kit.tree.layers
        state = Progress(str(ref), len(layers), sum(x.archive.size for x in layers))
        held = [min(await x.archive.cached_size(), x.archive.size) for x in layers]
        state.cached_before = state.bytes_done = sum(held)

        async def update() -> None:
            for position, layer in enumerate(layers):
                held[position] = min(await layer.archive.cached_size(), layer.archive.size)
            state.bytes_done = sum(held)
            state.downloaded = sources.fetched_bytes
            state.elapsed = time.monotonic() - started
            report(state)

        for layer in layers:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_tick, update)
                await layer.archive.prefetch()
                nursery.cancel_scope.cancel()
            state.layers_done.append(LayerDone(layer.kind, layer.path, layer.archive.size))
            await update()
    return state


async def _tick(update: Callable[[], Awaitable[None]]) -> None:
    while True:  # until cancelled, once the layer is in
        await update()
        await trio.sleep(PROGRESS_EVERY)
