"""Blocks kept in memory under a byte budget: least recently used first out, except that a
block a reader has gone past goes first.

A plain LRU fails a reader that streams a file: blocks fetched ahead of it are older than the
blocks it has just read, so once the window ahead nears the budget, the blocks it is about to
need are evicted in favour of those it will never read again (the kernel keeps those in its
page cache). :meth:`BlockMemory.passed` marks such a block as the next to go.

A block in memory is in use: ``on_add`` and ``on_drop`` tell the owner when one comes and goes
(the store pins it in the shared cache meanwhile, so that no process evicts it from disk).

:class:`MemoryCache` is the block cache (:mod:`~modelkitfs.cache.protocol`) built on the
same LRU: the store's tier below this memory, for tests and where no cache folder can be
written.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from modelkitfs.cache.blockfile import Buffer
from modelkitfs.cache.pages import PAGE, PageSpan, checked_span

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

    def peek(self, key: Key) -> Buffer | None:
        """The block, if here, without counting it as used."""
        return self._blocks.get(key)

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


class _Claim:
    """This process's claims on blocks of one blob (no other process sees a memory cache)."""

    def __init__(self, owner: MemoryCache, digest: str, block_size: int) -> None:
        self._owner, self._key = owner, (digest, block_size)
        self.held: set[int] = set()
        self.overtaken: set[int] = set()  # claimed by another, which keeps its claim

    def release(self, index: int) -> None:
        if index in self.held and index not in self.overtaken:
            self._owner._claimed.get(self._key, set()).discard(index)
        self.held.discard(index)
        self.overtaken.discard(index)

    def release_from(self, first: int) -> None:
        for index in [i for i in self.held if i >= first]:
            self.release(index)

    def close(self) -> None:
        self.release_from(0)


class MemoryCache:
    """A :class:`~modelkitfs.cache.protocol.BlockCache` in this process's memory, blocks
    bounded by ``max_bytes`` (least recently used out first), sidecar files unbounded (they
    are small). For tests, and for a process that can write no cache folder."""

    name = "memory"
    writable = True

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.blocks = BlockMemory(max_bytes)
        self.meta: dict[tuple[str, str], bytes] = {}
        self.pinned: dict[tuple[str, int, int], int] = {}
        self._claimed: dict[tuple[str, int], set[int]] = {}
        self._block_sizes: dict[str, set[int]] = {}

    def cannot_write(self) -> str | None:
        return None

    def read_block(
        self, digest: str, block_size: int, index: int, expected_size: int, *, keep: bool = False
    ) -> Buffer | None:
        data = self.blocks.get((f"{digest}/{block_size}", index))
        if data is None or len(data) != expected_size:
            return None
        return bytearray(data)  # the reader's own copy, as a disk read would be

    def read_pages(self, pages: PageSpan, nowait: bool = False) -> bytes | None:
        data = self.blocks.get((f"{pages.digest}/{pages.block_size}", pages.index))
        if data is None or len(data) != pages.length:
            return None
        (start, stop), first = pages.span, pages.span[0] // PAGE
        held = memoryview(data)[first * PAGE : -(-stop // PAGE) * PAGE]
        return checked_span(held, first, start, stop, pages.sums)

    def cached_blocks(self, digest: str, block_size: int, first: int, last: int) -> set[int]:
        key = f"{digest}/{block_size}"
        return {i for i in range(first, last + 1) if (key, i) in self.blocks}

    def write_block(self, digest: str, block_size: int, index: int, data: Buffer) -> None:
        self._block_sizes.setdefault(digest, set()).add(block_size)
        self.blocks.put((f"{digest}/{block_size}", index), bytes(data))

    def remove_blocks(self, digest: str) -> None:
        for block_size in self._block_sizes.pop(digest, set()):
            self.blocks.forget(f"{digest}/{block_size}")

    def claim_run(
        self, digest: str, block_size: int, first: int, last: int, overtake: bool = False
    ) -> _Claim | None:
        if self.cached_blocks(digest, block_size, first, first):
            return None
        claimed = self._claimed.setdefault((digest, block_size), set())
        claim = _Claim(self, digest, block_size)
        for index in range(first, last + 1):
            elsewhere = index in claimed
            if (elsewhere and not overtake) or self.cached_blocks(digest, block_size, index, index):
                break
            (claim.overtaken if elsewhere else claimed).add(index)
            claim.held.add(index)
        return claim

    def pin(self, digest: str, block_size: int, index: int) -> None:
        key = (digest, block_size, index)
        self.pinned[key] = self.pinned.get(key, 0) + 1

    def unpin(self, digest: str, block_size: int, index: int) -> None:
        key = (digest, block_size, index)
        if self.pinned.get(key, 0) <= 1:
            self.pinned.pop(key, None)
        else:
            self.pinned[key] -= 1

    def read_meta(self, digest: str, name: str) -> bytes | None:
        return self.meta.get((digest, name))

    def write_meta(self, digest: str, name: str, data: bytes) -> None:
        self.meta[(digest, name)] = bytes(data)
