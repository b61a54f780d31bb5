"""The node service: one daemon, one FUSE mount, one cache for every kit (``modelkitfs serve``).

Where ``mount`` serves one kit, this serves any: ``ROOT/REF/`` is the kit ``REF`` names, loaded
on first access through the same sources a mount uses (kit's local storage first, then one
client, connection pool and token cache per registry), over one shared cache. The FUSE side is
:class:`~modelkitfs.fuse.service.ServiceOperations`; this module gives it kits.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import trio

from modelkitfs.errors import MountError
from modelkitfs.fuse import serve
from modelkitfs.fuse.service import ServiceOperations
from modelkitfs.fuse.session import kernel_refusal, mount_options
from modelkitfs.kit import KitTree
from modelkitfs.metrics import serve_metrics
from modelkitfs.options import MountOptions
from modelkitfs.reference import Reference
from modelkitfs.sources import Sources

log = logging.getLogger("modelkitfs")

SERVICE = "serve"  # what a service's mount names as its reference (in mounts, ps)


class SourcesLoader:
    """Kits for the service, from the daemon's :class:`~modelkitfs.sources.Sources`."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    async def resolve(self, reference: Reference) -> str:
        store = self.sources.store_for(reference)
        fetched = await store.source.get_manifest(store.repository, reference.identifier)
        return fetched.digest

    async def load(self, reference: Reference) -> tuple[KitTree, Callable[[], dict[str, Any]]]:
        kit = await self.sources.open_kit(reference)

        def stats() -> dict[str, Any]:
            return {
                "reference": str(reference),
                "manifest": kit.manifest_digest,
                "kit_bytes": kit.tree.total_size,
                **self.sources.stats(),
                "threads": threading.active_count(),
            }

        return kit.tree, stats


async def serve_kits(
    root: str,
    options: MountOptions,
    on_ready: Callable[[], None],
    *,
    tag_ttl: float = 60.0,
    negative_ttl: float = 30.0,
    idle: float = 600.0,
    log_file: str | None = None,
) -> None:
    """Serve every kit under ``root`` until unmounted (with ``options.metrics``, Prometheus
    metrics too); ``log_file`` is where this process logs, as ``modelkitfs mounts`` shows."""
    async with Sources(options) as sources:

        def stats() -> dict[str, Any]:
            return {
                "reference": SERVICE,
                "kits": sorted(kit.entry.path for kit in operations.kits.values()),
                **sources.stats(),
                "pid": os.getpid(),
                "log": log_file,
                "cache_dir": options.cache_dir,
            }

        operations = ServiceOperations(
            SourcesLoader(sources),
            stats,
            timeout=options.timeout,
            tag_ttl=tag_ttl,
            negative_ttl=negative_ttl,
            idle=idle,
        )
        sources.corrupt_handlers.append(operations.invalidate_blob)
        stop_metrics = (
            serve_metrics(options.metrics, sources, operations, lambda: len(operations.kits))
            if options.metrics
            else None
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(operations.unload_idle)
                await serve(
                    operations,
                    root,
                    mount_options(f"modelkitfs:{SERVICE}", options.allow_other),
                    on_ready,
                )
                nursery.cancel_scope.cancel()
        except RuntimeError as exc:
            raise MountError(kernel_refusal(root, exc)) from None
        finally:
            if stop_metrics is not None:
                stop_metrics()
            await operations.aclose()
        log.info("stopped serving %s; fetched %d blob bytes", root, sources.fetched_bytes)
