"""Mirrors: where a registry's content is asked for first, as kit's ``--mirror`` sets them.

Each request goes to the mirrors in turn, then to the registry itself. A mirror that cannot be
reached is left alone for :data:`MIRROR_RETRY_AFTER` seconds (a mount must not pay a dead
mirror's timeout on every read); one that answers but lacks the content is asked again next
time. Requests to a mirror name the registry they stand for with containerd's ``?ns=``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from modelkitfs.errors import GaveUp, RegistryError, Unreachable

log = logging.getLogger(__name__)

MIRROR_RETRY_AFTER = 60.0

T = TypeVar("T")


class Mirrors:
    """The mirrors of ``registry`` (base URLs, in order) before its own ``base_url``."""

    def __init__(self, registry: str, base_url: str, mirrors: list[str]) -> None:
        self.registry = registry
        self.base_url = base_url
        self.mirrors = mirrors
        self._down_until: dict[str, float] = {}

    async def via(self, fetch: Callable[[str], Awaitable[T]], what: str) -> T:
        """``fetch(base_url)`` from each mirror in turn, then from the registry itself."""
        for mirror in self.mirrors:
            if self._down_until.get(mirror, 0.0) > trio.current_time():
                continue
            try:
                return await fetch(mirror)
            except RegistryError as exc:
                log.info("mirror %s: %s; trying the next source", mirror, exc)
                if isinstance(exc, Unreachable) or (
                    isinstance(exc, GaveUp) and isinstance(exc.last, Unreachable)
                ):
                    self._down_until[mirror] = trio.current_time() + MIRROR_RETRY_AFTER
        return await fetch(self.base_url)

    def url(self, base: str, path: str) -> str:
        """The URL of API ``path`` at ``base``, the registry or one of its mirrors."""
        if base == self.base_url:
            return base + path
        return f"{base}{path}?ns={self.registry}"  # containerd's mirror convention
