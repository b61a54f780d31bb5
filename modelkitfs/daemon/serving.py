"""Serving a mount over FUSE: the one session both daemons run, and the one-kit daemon's work.

A mount of one kit (``modelkitfs mount``) and the node service (``modelkitfs serve``) differ in
their operations and their statistics, not in how they serve: metrics beside the session when
asked for, the FUSE session with its background work, and a refusal by the kernel told in
words the user can act on. :func:`serve_fuse`
is that; :func:`serve_modelkit` is the mount of one kit built on it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pyfuse3
import trio

from modelkitfs.daemon.metrics import serve_metrics
from modelkitfs.errors import ModelKitFSError, MountError
from modelkitfs.fuse import KitOperations, Pushes, serve
from modelkitfs.fuse.session import kernel_refusal, mount_options
from modelkitfs.kit import KitTree
from modelkitfs.session import Sources, open_kit
from modelkitfs.session.options import MountOptions

log = logging.getLogger("modelkitfs")


async def serve_fuse(
    operations: pyfuse3.Operations,
    mountpoint: str,
    name: str,
    sources: Sources,
    on_ready: Callable[[], None],
    *,
    kits_loaded: Callable[[], int],
    background: Iterable[Callable[[], Awaitable[None]]],
) -> None:
    """Serve ``operations`` at ``mountpoint`` (its source in the mount table
    ``modelkitfs:NAME``) until unmounted, with Prometheus metrics when the options ask
    (``kits_loaded`` counts the kits held); ``background`` runs as long as the session;
    what holds the kits closes them once this returns or raises."""
    options = sources.options
    stop_metrics = (
        serve_metrics(options.metrics, sources, operations, kits_loaded)
        if options.metrics
        else None
    )
    try:
        await serve(
            operations,
            mountpoint,
            mount_options(f"modelkitfs:{name}", options.allow_other),
            on_ready,
            background=background,
        )
    except RuntimeError as exc:
        raise MountError(kernel_refusal(mountpoint, exc)) from None
    finally:
        if stop_metrics is not None:
            stop_metrics()


async def serve_modelkit(
    reference: str,
    mountpoint: str,
    options: MountOptions,
    on_ready: Callable[[], None],
    log_file: str | None = None,
    on_warning: Callable[[str], None] = lambda warning: None,
) -> None:
    """Open ``reference`` and serve it at ``mountpoint`` until unmounted; ``log_file`` is
    where this process logs (None: standard error), as ``modelkitfs mounts`` shows it;
    ``on_warning`` hears what the user should know before the mount is ready."""
    async with open_kit(reference, options, on_warning) as opened:
        sources, kit, ref = opened.sources, opened.kit, opened.name

        def stats() -> dict[str, Any]:
            return {
                "reference": ref,
                "manifest": kit.manifest_digest,
                "kit_bytes": kit.tree.total_size,
                **sources.stats(),
                **_task_counts(),
                "threads": threading.active_count(),
                "pid": os.getpid(),
                "pushed_bytes": pushes.pushed_bytes,
                "log": log_file,
                "cache_dir": options.cache_dir,
            }

        pushes = Pushes()
        operations = KitOperations(
            kit.tree, stats, timeout=options.timeout, name=ref, pushes=pushes
        )
        sources.corrupt_handlers.append(operations.invalidate_blob)
        if options.prefetch != "none":
            sources.start_soon(_fill_cache, kit.tree, options.prefetch)
        await serve_fuse(
            operations,
            mountpoint,
            ref,
            sources,
            on_ready,
            kits_loaded=lambda: 1,
            background=[pushes.run],
        )
        log.info("unmounted %s; fetched %d blob bytes", mountpoint, sources.fetched_bytes)


def _tasks(task: trio.lowlevel.Task) -> list[str]:
    """Names of the tasks alive under ``task``, itself included."""
    names = [task.name]
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            names += _tasks(child)
    return names


def _task_counts() -> dict[str, int]:
    """Tasks alive: pyfuse3's request workers (a pool it grows under load, up to its maximum,
    and keeps), and all others, a figure that must come back down once the load is gone."""
    root = trio.lowlevel.current_root_task()
    names = _tasks(root) if root is not None else []
    workers = sum(1 for name in names if name.startswith("pyfuse-"))
    return {"tasks": len(names) - workers, "fuse_workers": workers}


async def _fill_cache(tree: KitTree, which: str) -> None:
    """``--prefetch``: bring the model's layers (or all) into the cache while the mount
    serves; reads meanwhile share its downloads."""
    wanted = [x for x in tree.layers if which == "all" or x.kind in ("model", "modelpart")]
    failed = 0
    for layer in wanted:
        try:
            await layer.archive.prefetch()
        except ModelKitFSError as exc:
            failed += 1
            log.warning("prefetching %s failed: %s", layer.archive.digest, exc)
    if failed:
        log.warning(
            "prefetch (%s) incomplete: %d of %d layers are not all cached",
            which,
            failed,
            len(wanted),
        )
    else:
        log.info("prefetch (%s) done: %d layers cached and verified", which, len(wanted))
