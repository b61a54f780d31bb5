"""One kit opened for a session, with what every opening does before and after its use.

Mounting, reading without a mount and prefetching open a kit the same way: through the
session's sources, then a warning for each filter that selects nothing (so a typo is not an
empty folder without a word), then a note in the cache's catalog (``modelkitfs list``, ``cache
ls``); and when done they close the kit's tree, which finishes its cache writes. This is that
sequence, written once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from modelkitfs.kit import ModelKit
from modelkitfs.reference import Reference, parse_reference
from modelkitfs.session.catalog import record_kit
from modelkitfs.session.options import MountOptions
from modelkitfs.session.selection import warn_unmatched
from modelkitfs.session.sources import Sources


@dataclass(frozen=True)
class OpenedKit:
    """A kit, the reference it was opened as and the sources it reads through."""

    reference: Reference
    sources: Sources
    kit: ModelKit

    @property
    def name(self) -> str:
        """The reference as the user reads it (in warnings, the catalog, ``mounts``)."""
        return str(self.reference)


def _ignore(warning: str) -> None:
    """Warnings are logged in any case; a caller with no one else to tell passes nothing."""


@asynccontextmanager
async def open_kit(
    reference: str | Reference,
    options: MountOptions,
    on_warning: Callable[[str], None] = _ignore,
) -> AsyncIterator[OpenedKit]:
    """Open ``reference`` in a new session of ``options``: each filter that selects nothing
    is logged and told to ``on_warning``, the kit is recorded in the cache's catalog when
    there is a cache folder; on leaving, the kit's tree is closed and the session ended (its
    background work done), also after an error."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    async with Sources(options) as sources:
        kit = await sources.open_kit(ref)
        try:
            for warning in warn_unmatched(str(ref), kit.kitfile, options.filters):
                on_warning(warning)
            if options.cache_dir:
                await trio.to_thread.run_sync(record_kit, options.cache_dir, str(ref), kit)
            yield OpenedKit(ref, sources, kit)
        finally:
            await kit.tree.aclose()
