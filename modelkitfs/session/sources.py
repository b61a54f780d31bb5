"""Where a kit's manifests and blobs come from, the cache they go through, and the owner of
the background work they cause.

One :class:`Sources` per daemon (or prefetch, or command) is the session: kit's local storage
first, as kit looks, then a registry client per registry (``model.path`` may name kits
elsewhere), one blob store per repository, all over one shared disk cache and its budget. It
is an async context manager holding a nursery: every task started behind a reader (blocks
written to the cache, blobs verified, blocks fetched ahead, the budget's measuring) runs
there, so that leaving the session joins them (fetching ahead is cancelled, writes and
verifications get ``FLUSH_TIMEOUT`` to finish) and a failure in one is logged, never lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import trio

from modelkitfs.blobs import BlobStore
from modelkitfs.blobs.blocks import CacheStats
from modelkitfs.blobs.configs import CachedConfigs
from modelkitfs.blobs.jobs import Jobs
from modelkitfs.cache import CacheBudget, DiskCache
from modelkitfs.errors import NotAllowed, NotFound
from modelkitfs.kit import ModelKit, open_modelkit
from modelkitfs.reference import DEFAULT_REGISTRY, Reference
from modelkitfs.registry import RegistryClient, from_kit_storage, from_layout_folder
from modelkitfs.registry.layout import LoginChecked, kit_storage
from modelkitfs.registry.source import BlobSource
from modelkitfs.session.options import MountOptions
from modelkitfs.signing import Policy, SignatureRefused, SignatureStore, Verdict, verify_digest
from modelkitfs.signing.candidates import WithoutReferrers
from modelkitfs.signing.remembered import Remembered
from modelkitfs.signing.verifier import signatures_of

log = logging.getLogger(__name__)

FLUSH_TIMEOUT = 30.0  # seconds to finish cache writes at unmount


class Sources:
    def __init__(self, options: MountOptions) -> None:
        self.options = options
        self.cache = DiskCache(options.cache_dir or "")
        self.budget = CacheBudget(self.cache, options.cache_max_size)
        self.clients: dict[str, RegistryClient] = {}
        self.stores: dict[tuple[str, str], BlobStore] = {}
        self.corrupt_handlers: list[Callable[[str], Awaitable[None]]] = []
        self.policy = options.signature_policy()
        self.passes = Remembered(options.cache_dir)
        self.signature_checks = {"passed": 0, "refused": 0, "warned": 0}

    async def __aenter__(self) -> Sources:
        self._exit = contextlib.AsyncExitStack()
        self.nursery = await self._exit.enter_async_context(trio.open_nursery())
        self._exit.callback(self.nursery.cancel_scope.cancel)  # runs before the nursery joins
        self._work = Jobs(self.nursery, "background work of the session")
        self._work.start(self.budget.start)
        return self

    def start_soon(self, work: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``work(*args)`` in the session's background (``--prefetch``, say): cancelled
        when the session ends."""
        self._work.start(work, *args)

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._finish()
        finally:
            # What ended the session is not the nursery's to wrap in an exception group: it
            # leaves this with as it came.
            await self._exit.aclose()

    async def _finish(self) -> None:
        self._work.cancel()
        for store in self.stores.values():
            store.stop_ahead()
        for store in self.stores.values():
            with trio.move_on_after(FLUSH_TIMEOUT):
                await store.flush()
        for client in self.clients.values():
            await client.aclose()
        counters = self.stats()["cache"]
        try:
            await trio.to_thread.run_sync(self.cache.add_stats, counters)
        except OSError as exc:
            log.warning("could not record cache statistics: %s", exc)
        self.cache.pins.close()  # nothing of this process is in use any more
        with trio.move_on_after(FLUSH_TIMEOUT):
            await self.budget.finish()
        self.cache.process.release()

    async def open_kit(self, reference: Reference) -> ModelKit:
        """The kit ``reference`` names, with the options' filters and index labels."""
        return await open_modelkit(
            self.store_for,
            reference,
            filters=list(self.options.filters),
            labels=dict(self.options.labels),
            check=self.check_signed,
        )

    async def check_signed(self, reference: Reference, digest: str) -> Verdict | None:
        """Refuse manifest ``digest`` (what ``reference`` resolved to) with
        :class:`~modelkitfs.signing.SignatureRefused` unless the options' signature policy
        trusts it; None when there is no policy. A pass is remembered per policy."""
        if self.policy is None:
            return None
        return await self.verify(reference, digest, self.policy)

    async def verify(
        self, reference: Reference, digest: str, policy: Policy, *, remember: bool = True
    ) -> Verdict:
        """``digest``'s signatures judged by ``policy`` (``remember``: a pass remembered
        before is taken, and a new one kept)."""
        name = _name(reference)
        key = Remembered.key(policy.digest, name, digest)
        if remember and (signers := await self.passes.get(key)) is not None:
            return Verdict(name, digest, signers)
        store = self.signature_store(reference)
        try:
            verdict = await verify_digest(store, name, reference.repository, digest, policy)
        except SignatureRefused:
            self.signature_checks["refused"] += 1
            raise
        if verdict.warnings:
            self.signature_checks["warned"] += 1
            return verdict
        self.signature_checks["passed"] += 1
        if remember:
            await self.passes.put(key, verdict.signers)
        log.info("%s@%s is signed by %s", name, digest, "; ".join(map(str, verdict.signers)))
        return verdict

    async def signatures(self, reference: Reference, digest: str) -> dict[str, int]:
        """How many signatures of each format ``digest`` carries, none checked."""
        return await signatures_of(self.signature_store(reference), reference.repository, digest)

    def signature_store(self, target: Reference) -> SignatureStore:
        """Where ``target``'s signatures are read: its registry (not kit's local copy, which
        holds none), else the folder it is in."""
        store = self.store_for(target)
        client = None if target.is_layout else self.clients.get(target.registry)
        return client if client is not None else WithoutReferrers(store.source)

    def store_for(self, target: Reference) -> BlobStore:
        key = (target.registry, target.repository)
        if key not in self.stores:
            source = self._source_for(target)
            self.stores[key] = BlobStore(
                source if source.in_place else CachedConfigs(source, self.cache),
                target.repository,
                self.cache,
                self.nursery,
                budget=self.budget,
                verify=self.options.verify,
                on_corrupt=self._corrupt,
                timeout=self.options.timeout,
            )
        return self.stores[key]

    def _source_for(self, target: Reference) -> BlobSource:
        """kit's local storage first, as kit looks; ``localhost`` refs live only there. Local
        sources only as the options' trust allows (README, Security): a session that serves
        others reads them only inside the folders the operator listed, and serves a registry's
        kit from kit's storage only once the registry has served its manifest to its login."""
        if target.is_layout:
            if (folder := self._readable(target.repository)) is None:
                raise _outside(target)
            return from_layout_folder(folder)
        storage = self._readable(kit_storage())
        if storage is None and target.registry == DEFAULT_REGISTRY:
            raise _outside(target)
        local = (
            None
            if storage is None
            else from_kit_storage(target.registry, target.repository, target.identifier)
        )
        if target.registry == DEFAULT_REGISTRY:
            if local is None:
                raise NotFound(
                    f"{target} is not in kit's local storage ({storage}) and names no registry: "
                    "pack or pull it with kit first, or give its registry "
                    "(registry.example/repo:tag)"
                )
            return local
        if target.registry not in self.clients:
            self.clients[target.registry] = RegistryClient(
                target.registry, self.options.network(target.registry)
            )
        client = self.clients[target.registry]
        if local is None:
            return client
        return local if self.options.allow_local is None else LoginChecked(local, client)

    def _readable(self, path: str | os.PathLike[str]) -> str | None:
        """``path``'s real path, if this session may read it (a ``..`` or a symlink out of an
        allowed folder leads outside it); None if not."""
        real = os.path.realpath(path)
        folders = self.options.allow_local
        if folders is None or any(os.path.commonpath([f, real]) == f for f in folders):
            return real
        return None

    async def _corrupt(self, digest: str) -> None:
        for handler in self.corrupt_handlers:
            await handler(digest)

    @property
    def fetched_bytes(self) -> int:
        return sum(c.stats.blob_bytes for c in self.clients.values())

    def stats(self) -> dict[str, Any]:
        return {
            "fetched_bytes": self.fetched_bytes,
            "requests": sum(c.stats.requests for c in self.clients.values()),
            "cache": {
                key: sum(getattr(s.stats, key) for s in self.stores.values())
                for key in asdict(CacheStats())
            },
            # False while writes are paused after one failed (a full or read-only disk).
            "cache_writable": all(s.cache.writable for s in self.stores.values()),
            "signature_checks": dict(self.signature_checks),  # by outcome
        }


def _name(reference: Reference) -> str:
    """What a policy's globs match: ``registry/repository`` (the folder of a layout)."""
    if reference.is_layout:
        return f"{reference.registry}{reference.repository}"
    return f"{reference.registry}/{reference.repository}"


def _outside(target: Reference) -> NotAllowed:
    return NotAllowed(
        f"{target} is on this machine, outside the folders this service may read: name a "
        "registry reference, or have the operator add the folder with --allow-local"
    )
