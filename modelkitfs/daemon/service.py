"""The node service: one daemon, one FUSE mount, one cache for every kit (``modelkitfs serve``).

Where ``mount`` serves one kit, this serves any: ``ROOT/REF/`` is the kit ``REF`` names, loaded
on first access through the same sources a mount uses (kit's local storage first, then one
client, connection pool and token cache per registry), over one shared cache. The FUSE side is
:class:`~modelkitfs.fuse.service.ServiceOperations`; this module gives it kits.

Its statistics attribute (``user.modelkitfs.stats`` at the root, read by ``modelkitfs mounts``)
holds totals only, whatever the number of kits: an extended attribute holds 64 KiB at most.
The names of the kits served go to a file of their own, written when the statistics are read,
which the attribute names (``kits_file``) and ``mounts`` reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from modelkitfs.daemon.serving import serve_fuse
from modelkitfs.fuse.service import ServiceOperations
from modelkitfs.kit import KitTree
from modelkitfs.reference import Reference
from modelkitfs.session.options import MountOptions
from modelkitfs.session.sources import Sources

log = logging.getLogger("modelkitfs")

SERVICE = "serve"  # what a service's mount names as its reference (in mounts, ps)


class SourcesLoader:
    """Kits for the service, from the daemon's :class:`~modelkitfs.session.sources.Sources`."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    async def resolve(self, reference: Reference) -> str:
        store = self.sources.store_for(reference)
        fetched = await store.source.get_manifest(store.repository, reference.identifier)
        # A tag's symlink moves only to a digest the signature policy trusts (README, Signed
        # kits): a refusal is EACCES, with the reason in the log.
        await self.sources.check_signed(reference, fetched.digest)
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
    kits_file = kits_file_for(log_file)
    async with Sources(options) as sources:
        operations = ServiceOperations(
            SourcesLoader(sources),
            timeout=options.timeout,
            tag_ttl=tag_ttl,
            negative_ttl=negative_ttl,
            idle=idle,
        )
        operations.stats = service_stats(operations, sources, log_file, kits_file)
        sources.corrupt_handlers.append(operations.invalidate_blob)
        try:
            await serve_fuse(
                operations,
                root,
                SERVICE,
                sources,
                on_ready,
                kits_loaded=lambda: operations.loads.loaded,
                background=[operations.unload_idle, operations.pushes.run],
            )
        finally:
            await operations.aclose()
            with contextlib.suppress(OSError):
                kits_file.unlink()
        log.info("stopped serving %s; fetched %d blob bytes", root, sources.fetched_bytes)


def service_stats(
    operations: ServiceOperations, sources: Sources, log_file: str | None, kits_file: Path
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The service's statistics: totals, and where the kits it serves are listed."""

    async def stats() -> dict[str, Any]:
        names = operations.kit_names
        written = await trio.to_thread.run_sync(write_kits, kits_file, names)
        return {
            "reference": SERVICE,
            "kit_count": len(names),
            "kits_loaded": operations.loads.loaded,
            "kits_file": str(kits_file) if written else None,
            "names_held": len(operations.namespace.entries),
            **sources.stats(),
            "pid": os.getpid(),
            "log": log_file,
            "cache_dir": sources.options.cache_dir,
        }

    return stats


def kits_file_for(log_file: str | None) -> Path:
    """Where a service lists its kits: beside its log, else in this user's folder under the
    temporary directory (as a log that cannot be in the cache is)."""
    folder = (
        Path(log_file).parent
        if log_file
        else Path(tempfile.gettempdir()) / f"modelkitfs-{os.getuid()}"
    )
    return folder / f"serve-{os.getpid()}-kits.json"


def write_kits(path: Path, names: list[str]) -> bool:
    """Write the kit list to ``path`` (readable by its owner only, replaced whole); False when
    it cannot be written."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as out:
            try:
                json.dump(names, out)
            except OSError:
                os.unlink(out.name)
                raise
        os.replace(out.name, path)
        return True
    except OSError as exc:
        log.warning("cannot list the kits served in %s: %s", path, exc)
        return False


def with_kits(stats: dict[str, Any], owner: int) -> dict[str, Any]:
    """A service's statistics with ``kits``, the names of its kits, read from the file they
    name, when the service's owner (uid ``owner``) owns it: a daemon of another user cannot
    make ``modelkitfs mounts`` print a file of ours."""
    name = stats.get("kits_file")
    if not isinstance(name, str) or not Path(name).name.startswith("serve-"):
        return stats
    try:
        descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(descriptor) as listed:
            if os.fstat(listed.fileno()).st_uid != owner:
                return stats
            names = json.load(listed)
    except (OSError, ValueError):
        return stats
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return {**stats, "kits": names}
    return stats
