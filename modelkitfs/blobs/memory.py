"""Blocks kept in memory under a byte budget: least recently used first out, except that a
block a reader has gone past goes first.

A plain LRU fails a reader that streams a file: blocks fetched ahead of it are older than the
blocks it has just read, so once the window ahead nears the budget, the blocks it is about to
need are evicted in favour of those it will never read again (the kernel keeps those in its
page cache). :meth:`BlockMemory.passed` marks such a block as the next to go.

A block in memory is in use: ``on_add`` and ``on_drop`` tell the owner when one comes and goes
(the store pins it in the shared cache meanwhile, so that no process evicts it from disk).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from modelkitfs.blobs.blockfile import Buffer

Key = tuple[str, int]  # (digest, block index)


def _nothing(key: Key) -> None:
    pass


class BlockMemory:
    def __init__(
        self,
        max_bytes: int,
        on_add: Callable[[Key], None] = _nothing,
        on_drop: Callable[[Key], None] = _nothing,
    ) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.on_add = on_add
        self.on_drop = on_drop
        self._blocks: OrderedDict[Key, Buffer] = OrderedDict()  # oldest first

    def __contains__(self, key: Key) -> bool:
        return key in self._blocks

    def get(self, key: Key) -> Buffer | None:
        data = self._blocks.get(key)
        if data is not None:
            self._blocks.move_to_end(key)
        return data

    def put(self, key: Key, data: Buffer) -> None:
        self.pop(key)
        if len(data) > self.max_bytes:
            return
        self._blocks[key] = data
        self.used += len(data)
        self.on_add(key)
        while self.used > self.max_bytes:
            dropped, evicted = self._blocks.popitem(last=False)
            self.used -= len(evicted)
            self.on_drop(dropped)

    def passed(self, key: Key) -> None:
        """A reader has read past this block: let it go first."""
        if key in self._blocks:
            self._blocks.move_to_end(key, last=False)

    def pop(self, key: Key) -> None:
        data = self._blocks.pop(key, None)
        if data is not None:
            self.used -= len(data)
            self.on_drop(key)

    def forget(self, digest: str) -> None:
        for key in [k for k in self._blocks if k[0] == digest]:
            self.pop(key)
