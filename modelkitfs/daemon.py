"""The mount daemon: wires registry, cache, archives, tree and FUSE together and serves.

:func:`main` is what :func:`modelkitfs.mount.mount` starts in the background. It reads what to
mount from its standard input (a pipe: options, a proxy's credentials among them, never appear
on a command line that every user can read), takes the title ``modelkitfs: REFERENCE on
MOUNTPOINT`` (``ps``, ``pgrep modelkitfs``), reports on standard output, once, either ``ready``
or ``error<TAB>message``, then logs to the log file only.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import setproctitle
import trio

from modelkitfs.catalog import record_kit
from modelkitfs.errors import ModelKitFSError, MountError
from modelkitfs.fuse import KitOperations, Pushes, serve
from modelkitfs.fuse.session import kernel_refusal, mount_options
from modelkitfs.kit import KitTree
from modelkitfs.metrics import serve_metrics
from modelkitfs.options import MountOptions
from modelkitfs.reference import parse_reference
from modelkitfs.selection import warn_unmatched
from modelkitfs.serve import serve_kits
from modelkitfs.sources import Sources

log = logging.getLogger("modelkitfs")

M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h


def process_title(reference: str, mountpoint: str) -> str:
    return f"modelkitfs: {reference} on {mountpoint}"


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
    ref = parse_reference(reference)
    async with Sources(options) as sources:
        kit = await sources.open_kit(ref)
        for warning in warn_unmatched(str(ref), kit.kitfile, options.filters):
            on_warning(warning)
        if options.cache_dir:
            await trio.to_thread.run_sync(record_kit, options.cache_dir, str(ref), kit)

        def stats() -> dict[str, Any]:
            return {
                "reference": str(ref),
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
            kit.tree, stats, timeout=options.timeout, name=str(ref), pushes=pushes
        )
        sources.corrupt_handlers.append(operations.invalidate_blob)
        if options.prefetch != "none":
            sources.start_soon(_fill_cache, kit.tree, options.prefetch)
        stop_metrics = (
            serve_metrics(options.metrics, sources, operations, lambda: 1)
            if options.metrics
            else None
        )
        try:
            await serve(
                operations,
                mountpoint,
                mount_options(f"modelkitfs:{ref}", options.allow_other),
                on_ready,
                background=[pushes.run],
            )
        except RuntimeError as exc:
            raise MountError(kernel_refusal(mountpoint, exc)) from None
        finally:
            if stop_metrics is not None:
                stop_metrics()
            await kit.tree.aclose()
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


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s modelkitfs[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def main() -> int:
    """Entry of the background daemon (see the module docstring for the protocol)."""
    _one_malloc_arena()
    arguments = pickle.loads(sys.stdin.buffer.read())  # from our parent, through a pipe
    options: MountOptions = arguments["options"]
    setproctitle.setproctitle(process_title(arguments["reference"], arguments["mountpoint"]))
    configure_logging(options.log_level)
    report = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # stray prints go to the log, never into the report pipe

    def ready() -> None:
        log.info("mounted %s at %s", arguments["reference"], arguments["mountpoint"])
        report.write("ready\n")
        report.close()

    def warn(warning: str) -> None:
        report.write(f"warning\t{' '.join(warning.split())}\n")
        report.flush()

    try:
        if (service := arguments.get("service")) is not None:  # modelkitfs serve ROOT
            trio.run(
                partial(serve_kits, arguments["mountpoint"], options, ready, **service),
            )
        else:
            trio.run(
                serve_modelkit,
                arguments["reference"],
                arguments["mountpoint"],
                options,
                ready,
                arguments["log"],
                warn,
            )
    except ModelKitFSError as exc:
        log.error("%s", exc)
        _report_error(report, str(exc), type(exc).__name__)
        return 1
    except Exception as exc:
        log.exception("daemon failed")
        _report_error(report, f"unexpected failure: {exc!r} (see the log for details)")
        return 1
    return 0


def _one_malloc_arena() -> None:
    """Worker threads allocate the buffers of range requests and the trio thread frees them;
    with glibc's arena per thread the freed memory stays behind in each; one arena costs no
    speed (README, Speed)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)


def _report_error(report: TextIO, message: str, kind: str = "") -> None:
    """Tell the waiting parent the error's message and ``kind`` (its class's name, for
    :class:`~modelkitfs.mount.DaemonError`); closed at once, as nothing flushes it at a hard
    exit."""
    if not report.closed:
        report.write(f"error\t{kind}\t{message}\n")
        report.close()


def log_path(cache_dir: str) -> Path:
    return Path(cache_dir) / "logs" / "modelkitfs.log"
