"""The mount daemon: wires registry, cache, archives, tree and FUSE together and serves.

:func:`main` with one JSON argument is what :func:`modelkitfs.mount.mount` starts in the
background. It reports on standard output, once, either ``ready`` or ``error<TAB>message``, then
logs to the log file only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import trio

from modelkitfs.blobs import BlobStore, DiskCache
from modelkitfs.blobs.budget import CacheBudget, parse_size
from modelkitfs.blobs.store import CacheStats
from modelkitfs.config import configured_mirrors
from modelkitfs.errors import ModelKitFSError, MountError, NotFound
from modelkitfs.fuse import KitOperations, serve
from modelkitfs.fuse.session import mount_options
from modelkitfs.kit import open_modelkit, parse_filters, parse_labels
from modelkitfs.reference import DEFAULT_REGISTRY, Reference, parse_reference
from modelkitfs.registry import (
    LayoutSource,
    RegistryClient,
    from_kit_storage,
    from_layout_folder,
)
from modelkitfs.registry.layout import kit_storage
from modelkitfs.registry.transport import NetworkOptions, ssl_context

log = logging.getLogger("modelkitfs")


VERIFY_MODES = ("complete", "full")


@dataclass
class MountOptions:
    plain_http: bool = False
    tls_verify: bool = True
    tls_cert: str | None = None  # extra CA bundle
    cert: str | None = None  # client certificate
    key: str | None = None
    proxy: str | None = None
    mirrors: list[str] = field(default_factory=list)  # tried before the registry, in order
    cache_dir: str | None = None
    cache_max_size: str | None = None  # e.g. "20G"; default half the cache's file system
    verify: str = "complete"  # "complete": each blob once all cached; "full": before serving
    log_level: str = "INFO"
    allow_other: bool = False
    filters: list[str] = field(default_factory=list)  # kit unpack --filter, e.g. "model,docs"
    labels: list[str] = field(default_factory=list)  # key=value, picks from a ModelKit index

    def check(self) -> None:
        """Raise the error a malformed option would cause, before any mounting."""
        parse_filters(self.filters)
        parse_labels(self.labels)
        if self.cache_max_size is not None:
            parse_size(self.cache_max_size)
        if self.verify not in VERIFY_MODES:
            raise ModelKitFSError(
                f"unknown --verify {self.verify!r}: use one of {', '.join(VERIFY_MODES)}"
            )
        ssl_context(self.network())

    def network(self, registry: str | None = None) -> NetworkOptions:
        """How to reach ``registry``: these options plus the mirrors configured for it."""
        mirrors = [*self.mirrors, *(configured_mirrors(registry) if registry else [])]
        return NetworkOptions(
            plain_http=self.plain_http,
            tls_verify=self.tls_verify,
            tls_cert=self.tls_cert,
            client_cert=self.cert,
            client_key=self.key,
            proxy=self.proxy,
            mirrors=tuple(dict.fromkeys(mirrors)),
        ).with_environment()


async def serve_modelkit(
    reference: str, mountpoint: str, options: MountOptions, on_ready: Callable[[], None]
) -> None:
    """Open ``reference`` and serve it at ``mountpoint`` until unmounted."""
    ref = parse_reference(reference)
    cache = DiskCache(options.cache_dir or "")
    max_size = parse_size(options.cache_max_size) if options.cache_max_size else None
    budget = CacheBudget(cache, max_size)
    trio.lowlevel.spawn_system_task(budget.start)
    clients: dict[str, RegistryClient] = {}
    stores: dict[tuple[str, str], BlobStore] = {}

    def store_for(target: Reference) -> BlobStore:
        key = (target.registry, target.repository)
        if key not in stores:
            stores[key] = BlobStore(
                source_for(target),
                target.repository,
                cache,
                budget=budget,
                verify=options.verify,
            )
        return stores[key]

    def source_for(target: Reference) -> RegistryClient | LayoutSource:
        """kit's local storage first, as kit looks; ``localhost`` refs live only there."""
        if target.is_layout:
            return from_layout_folder(target.repository)
        local = from_kit_storage(target.registry, target.repository, target.identifier)
        if local is not None:
            return local
        if target.registry == DEFAULT_REGISTRY:
            raise NotFound(
                f"{target} is not in kit's local storage ({kit_storage()}) and names no registry: "
                "pack or pull it with kit first, or give its registry (registry.example/repo:tag)"
            )
        if target.registry not in clients:
            clients[target.registry] = RegistryClient(
                target.registry, options.network(target.registry)
            )
        return clients[target.registry]

    try:
        kit = await open_modelkit(
            store_for,
            ref,
            filters=parse_filters(options.filters),
            labels=parse_labels(options.labels),
        )

        def stats() -> dict[str, Any]:
            return {
                "reference": str(ref),
                "manifest": kit.manifest_digest,
                "kit_bytes": kit.tree.total_size,
                "fetched_bytes": sum(c.stats.blob_bytes for c in clients.values()),
                "requests": sum(c.stats.requests for c in clients.values()),
                "cache": {
                    key: sum(getattr(s.stats, key) for s in stores.values())
                    for key in asdict(CacheStats())
                },
            }

        operations = KitOperations(kit.tree, stats)
        try:
            await serve(
                operations,
                mountpoint,
                mount_options(f"modelkitfs:{ref}", options.allow_other),
                on_ready,
            )
        except RuntimeError as exc:
            raise MountError(
                f"the kernel refused to mount {mountpoint} ({exc}): check that /dev/fuse exists "
                "and that fuse3 is installed (apt-get install fuse3)"
            ) from None
        finally:
            await kit.tree.aclose()
        log.info("unmounted %s; fetched %d blob bytes", mountpoint, stats()["fetched_bytes"])
    finally:
        for client in clients.values():
            await client.aclose()


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
    arguments = json.loads(sys.argv[1])
    options = MountOptions(**arguments["options"])
    configure_logging(options.log_level)
    report = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # stray prints go to the log, never into the report pipe

    def ready() -> None:
        log.info("mounted %s at %s", arguments["reference"], arguments["mountpoint"])
        report.write("ready\n")
        report.close()

    try:
        trio.run(serve_modelkit, arguments["reference"], arguments["mountpoint"], options, ready)
    except ModelKitFSError as exc:
        log.error("%s", exc)
        _report_error(report, str(exc))
        return 1
    except Exception as exc:
        log.exception("daemon failed")
        _report_error(report, f"unexpected failure: {exc!r} (see the log for details)")
        return 1
    return 0


def _report_error(report: TextIO, message: str) -> None:
    """Tell the waiting parent; closed at once, as nothing flushes it at a hard exit."""
    if not report.closed:
        report.write(f"error\t{message}\n")
        report.close()


def log_path(cache_dir: str) -> Path:
    return Path(cache_dir) / "logs" / "modelkitfs.log"
