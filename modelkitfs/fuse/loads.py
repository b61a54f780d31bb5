"""Kits for ``modelkitfs serve``: each loaded once per manifest, never waited on past the timeout.

A kit is keyed by registry, repository and digest: every name that reaches it (``llm@D``,
``llm:v1@D``, a thousand tags pinned to ``D``) shares its one tree. Not across repositories: a
registry grants access per repository, so a name under another repository is asked of that
repository, with its own authorization, even for a digest loaded already. Loading runs in a
task of its own (:func:`~modelkitfs.primitives.deadline.within`): a request waits at most
``timeout``, the load goes on and serves the next request. What a registry does not know is
remembered for ``negative_ttl``, for a bounded number of names. What a tag named last is kept
too (for a bounded number of tags), so that while its registry cannot be reached the tag is
served from its last digest, with one warning, rather than failing.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import cachetools
import pyfuse3
import trio

from modelkitfs.errors import (
    AuthenticationError,
    GaveUp,
    ModelKitFSError,
    NotAModelKit,
    NotFound,
    TransientError,
)
from modelkitfs.kit.tree import KitTree
from modelkitfs.primitives.deadline import DeadlineExceeded, within
from modelkitfs.primitives.singleflight import SingleFlight
from modelkitfs.reference import Reference

log = logging.getLogger(__name__)

NEGATIVE_ENTRIES = 10_000  # names remembered as unknown, at most
TAGS_REMEMBERED = 10_000  # tags whose last digest is kept for an outage, at most
OUTAGE = (TransientError, GaveUp, DeadlineExceeded)  # the registry cannot be reached now


class KitLoader(Protocol):
    """Where the service gets kits from (the daemon's sources: registries, kit's storage)."""

    async def resolve(self, reference: Reference) -> str:
        """The digest ``reference``'s tag names now."""

    async def load(self, reference: Reference) -> tuple[KitTree, Callable[[], dict[str, Any]]]:
        """The kit ``reference`` (pinned by digest) names: its tree and its statistics."""


class KitChanged(ModelKitFSError):
    """A kit built again numbers its paths otherwise: what the kernel holds of it is stale."""


@dataclass
class Loaded:
    """One kit, shared by every name of it: its tree while loaded, else the numbers of the
    paths the kernel saw, so that the tree built again names the same files by them."""

    reference: Reference  # registry/repository@digest
    tree: KitTree | None = None
    stats: Callable[[], dict[str, Any]] = dict
    numbers: dict[str, int] = field(default_factory=dict)
    users: set[int] = field(default_factory=set)  # the service's slots of the names reaching it
    last_used: float = float("-inf")


def pinned(reference: Reference) -> Reference:
    return Reference(reference.registry, reference.repository, digest=reference.digest)


class Loads:
    def __init__(self, loader: KitLoader, *, timeout: float, negative_ttl: float) -> None:
        self.loader = loader
        self.timeout = timeout
        self.kits: dict[str, Loaded] = {}  # by pinned reference
        self._loading: SingleFlight[str, Loaded] = SingleFlight()
        self._resolving: SingleFlight[str, str] = SingleFlight()
        self._unknown: cachetools.TTLCache[str, int] = cachetools.TTLCache(
            NEGATIVE_ENTRIES, negative_ttl, timer=trio.current_time
        )
        # A tag's path -> the digest it named last, and whether an outage was warned of.
        self._last: cachetools.LRUCache[str, tuple[str, bool]] = cachetools.LRUCache(
            TAGS_REMEMBERED
        )

    @property
    def loaded(self) -> int:
        """Kits whose tree is in memory now."""
        return sum(1 for kit in self.kits.values() if kit.tree is not None)

    async def kit(self, path: str, reference: Reference) -> Loaded:
        """The kit ``reference`` pins, its tree loaded (numbered as before if it was), asked
        as ``path``. Failures are the errno a user expects (see :meth:`_failure`)."""
        key = str(pinned(reference))
        found = self.kits.get(key)
        if found is None or found.tree is None:
            try:
                found = await self._ask(path, self._loading.run, key, self._load, key, reference)
            except Exception as exc:
                raise self._failure(path, exc) from None
        found.last_used = trio.current_time()
        return found

    async def _load(self, key: str, reference: Reference) -> Loaded:
        known = self.kits.get(key)
        if known is not None and known.tree is not None:  # loaded since the caller looked
            return known
        reference = pinned(reference)
        numbers = known.numbers if known is not None else {}
        tree, stats = await self.loader.load(reference)
        try:
            if numbers:
                await tree.adopt_inodes(numbers)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await tree.aclose()
            if isinstance(exc, ValueError):
                raise KitChanged(
                    f"{reference} changed while unloaded: what was open of it is stale"
                ) from None
            raise
        loaded = self.kits.setdefault(key, Loaded(reference))
        loaded.tree, loaded.stats, loaded.numbers = tree, stats, {}
        loaded.last_used = trio.current_time()
        log.info("loaded %s%s", reference, " again" if numbers else "")
        return loaded

    async def resolve(self, path: str, reference: Reference) -> str:
        """The digest tag ``reference`` (at ``path``) names now; while its registry cannot be
        reached, the one it named last, with one warning."""
        try:
            return await self._ask(path, self._resolving.run, path, self._resolve, path, reference)
        except OUTAGE as exc:
            if (last := self._last.get(path)) is None:
                raise self._failure(path, exc) from None
            digest, warned = last
            if not warned:
                log.warning(
                    "%s: %s; serving the kit it named last (%s) until its registry answers",
                    path,
                    exc,
                    digest,
                )
                self._last[path] = (digest, True)
            return digest
        except Exception as exc:
            if isinstance(exc, NotFound):
                self._last.pop(path, None)
            raise self._failure(path, exc) from None

    async def _resolve(self, path: str, reference: Reference) -> str:
        digest = await self.loader.resolve(reference)
        last = self._last.get(path)
        if last is not None and last[0] != digest:
            log.info("%s moved to %s", path, digest)
        elif last is not None and last[1]:
            log.info("%s: its registry answers again", path)
        self._last[path] = (digest, False)
        return digest

    async def _ask(self, path: str, function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``function(*args)`` within the deadline, unless ``path`` is known to be unknown."""
        if (known := self._unknown.get(path)) is not None:
            raise pyfuse3.FUSEError(known)
        return await within(self.timeout, f"loading {path}", function, *args)

    def _failure(self, path: str, exc: Exception) -> pyfuse3.FUSEError:
        """The errno a user expects for ``exc`` (unknown: ENOENT, remembered for the negative
        TTL; refused: EACCES; changed: ESTALE; else EIO), logged once."""
        if isinstance(exc, pyfuse3.FUSEError):
            return exc
        if isinstance(exc, NotFound | NotAModelKit):
            log.warning("%s: %s", path, exc)
            self._unknown[path] = errno.ENOENT
            return pyfuse3.FUSEError(errno.ENOENT)
        if isinstance(exc, ModelKitFSError):
            log.error("%s: %s", path, exc)
            if isinstance(exc, AuthenticationError):
                return pyfuse3.FUSEError(errno.EACCES)
            return pyfuse3.FUSEError(errno.ESTALE if isinstance(exc, KitChanged) else errno.EIO)
        log.error("loading %s failed unexpectedly", path, exc_info=exc)
        return pyfuse3.FUSEError(errno.EIO)

    async def aclose(self) -> None:
        for kit in self.kits.values():
            if kit.tree is not None:
                await kit.tree.aclose()
        self.kits.clear()
