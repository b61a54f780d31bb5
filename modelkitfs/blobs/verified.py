"""What a verified blob leaves behind: the chaining states of its SHA-256
(:mod:`~modelkitfs.blobs.sha256chain`), recorded in the cache for every process, which check a
block downloaded again on its own.

Apart from the verification's state machine (:mod:`~modelkitfs.blobs.verification`) because
reading needs them below it: a download checks each block of a blob verified before against
them as it arrives (:mod:`~modelkitfs.blobs.downloads`).
"""

from __future__ import annotations

import json
import logging

import trio

from modelkitfs.blobs.blocks import Blocks
from modelkitfs.blobs.sha256chain import BlobChain, from_record, to_record
from modelkitfs.cache import BlockCache

log = logging.getLogger(__name__)

VERIFIED_RECORD = "verified.v2.json"


def record(size: int, block_size: int, chain: BlobChain) -> bytes:
    """The record of a verified blob: what checks its blocks downloaded again."""
    states = to_record(chain.states)
    return json.dumps({"size": size, "block_size": block_size, "states": states}).encode()


class VerifiedStates:
    """Chaining states of the blobs verified (by any process on ``cache``), by digest."""

    def __init__(self, cache: BlockCache, blocks: Blocks) -> None:
        self.cache = cache
        self.blocks = blocks
        self.states: dict[str, list[bytes]] = {}
        self._checked_record: set[str] = set()

    def get(self, digest: str) -> list[bytes] | None:
        return self.states.get(digest)

    async def known(self, digest: str) -> list[bytes] | None:
        """Chaining states of a blob verified before (by any process), if any."""
        if digest not in self.states and digest not in self._checked_record:
            self._checked_record.add(digest)
            found = await trio.to_thread.run_sync(self.cache.read_meta, digest, VERIFIED_RECORD)
            try:
                document = json.loads(found) if found else None
                if document and document["block_size"] == self.blocks.size:
                    self.states[digest] = from_record(document["states"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable %s of %s", VERIFIED_RECORD, digest)
        return self.states.get(digest)

    async def save(self, digest: str, chain: BlobChain, size: int) -> None:
        """Keep the states of ``digest``, just verified, and record them for every process."""
        self.states[digest] = chain.states
        data = record(size, self.blocks.size, chain)
        try:
            await trio.to_thread.run_sync(self.cache.write_meta, digest, VERIFIED_RECORD, data)
        except OSError as exc:  # the cache warned once: it cannot be written
            log.debug("could not save %s for %s in the cache: %s", VERIFIED_RECORD, digest, exc)
