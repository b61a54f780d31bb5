"""Small reads of checked blocks read just their pages, and never serve a wrong byte: not from a
block file damaged, cut short or evicted after its check."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from modelkitfs.blobs import BlobStore
from modelkitfs.blobs.pages import CheckedPages
from modelkitfs.cache import PAGE, DiskCache
from modelkitfs.cache import pages as pages_module
from tests.unit.blobs.stores import BLOCK, OneBlob, opened

CHECKED = 3  # the block read in part, then left in memory no more
AT = CHECKED * BLOCK + 5000  # a 4 KiB read across two of its pages


class CountingCache(DiskCache):
    """A disk cache counting the blocks read whole."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.whole_reads = 0
        self.kept: list[int] = []  # blocks read whole, their pages kept in the page cache

    def read_block(self, *args: Any, **kwargs: Any) -> Any:
        self.whole_reads += 1
        if kwargs.get("keep"):
            self.kept.append(args[2])
        return super().read_block(*args, **kwargs)


def with_checked_block(
    tmp_path: Path, then: Callable[[BlobStore, OneBlob, CountingCache, Path], Awaitable[None]]
) -> None:
    """Every block of a blob on disk; a new store (this process, later) reads part of block
    ``CHECKED``, which checks it whole, and lets it leave memory; then ``then``."""
    source, cache = OneBlob(size=8 * BLOCK + 3), CountingCache(tmp_path)

    async def main() -> None:
        async with opened(source, cache) as store:
            await store.read(source.digest, source.size, 0, source.size)
        async with opened(source, cache) as store:
            assert await read(store, source, AT) == source.data[AT : AT + PAGE]
            store.memory.pop((source.digest, CHECKED))
            await then(store, source, cache, cache.block_path(source.digest, BLOCK, CHECKED))

    trio.run(main)


def flip_bit(path: Path, at: int) -> None:
    """Damage a block file's byte ``at``, its checksum left as it was."""
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 1]))


async def read(store: BlobStore, source: OneBlob, offset: int, length: int = PAGE) -> bytes:
    return await store.read(source.digest, source.size, offset, length)


def test_small_reads_of_a_checked_block_read_its_pages_not_the_block(tmp_path: Path) -> None:
    async def then(store: BlobStore, source: OneBlob, cache: CountingCache, path: Path) -> None:
        whole, sent = cache.whole_reads, source.sent
        for offset in (AT, CHECKED * BLOCK, (CHECKED + 1) * BLOCK - 100, AT + 1):
            assert (
                await read(store, source, offset, 100 + PAGE)
                == source.data[offset : offset + 100 + PAGE]
            )
        assert cache.whole_reads == whole + 1  # only block 4, which the third read began
        assert source.sent == sent
        assert (source.digest, CHECKED) not in store.memory  # nor kept in memory

    with_checked_block(tmp_path, then)


def test_a_small_read_of_a_block_not_yet_checked_keeps_its_pages_a_large_one_does_not(
    tmp_path: Path,
) -> None:
    """The small reads that follow in a block read its pages: from the page cache, if the
    block's first, whole read left them there (an image folder's files: once from disk)."""
    source, cache = OneBlob(size=8 * BLOCK + 3), CountingCache(tmp_path)

    async def main() -> None:
        async with opened(source, cache) as store:
            await store.read(source.digest, source.size, 0, source.size)
        async with opened(source, cache) as store:  # this process has checked no block
            assert await read(store, source, AT) == source.data[AT : AT + PAGE]
            assert cache.kept == [CHECKED]
            start = 6 * BLOCK
            assert await read(store, source, start, BLOCK) == source.data[start : start + BLOCK]
            assert cache.kept == [CHECKED]

    trio.run(main)


@pytest.mark.parametrize("fault", ["damaged", "cut short"])
def test_a_faulty_block_a_small_read_takes_whole_is_fetched_again(
    tmp_path: Path, fault: str
) -> None:
    """Read through the page cache to keep its pages, a block is checked all the same."""
    source, cache = OneBlob(size=8 * BLOCK + 3), CountingCache(tmp_path)

    async def main() -> None:
        async with opened(source, cache) as store:
            await store.read(source.digest, source.size, 0, source.size)
        path = cache.block_path(source.digest, BLOCK, CHECKED)
        if fault == "cut short":
            os.truncate(path, BLOCK // 2)
        else:
            flip_bit(path, AT % BLOCK)
        async with opened(source, cache) as store:
            sent = source.sent
            assert await read(store, source, AT) == source.data[AT : AT + PAGE]
            assert cache.kept == [CHECKED] and source.sent == sent + BLOCK  # fetched again
            after = AT + 3 * PAGE  # the fault gone: the block's pages read from disk
            assert await read(store, source, after) == source.data[after : after + PAGE]
            assert source.sent == sent + BLOCK

    trio.run(main)


def test_blocks_read_ahead_of_small_reads_in_order_keep_their_pages_too(tmp_path: Path) -> None:
    """An image folder read in order: the blocks fetched ahead of it from disk are read the
    same way its small reads' own would have been."""
    source, cache = OneBlob(size=48 * BLOCK + 3), CountingCache(tmp_path)

    async def main() -> None:
        async with opened(source, cache) as store:
            await store.read(source.digest, source.size, 0, source.size)
        cache.whole_reads, cache.kept = 0, []
        async with opened(source, cache) as store:
            step = 8 * 1024
            for offset in range(0, 40 * BLOCK, step):
                assert (
                    await read(store, source, offset, step) == source.data[offset : offset + step]
                )
        assert cache.whole_reads > 40 and len(cache.kept) == cache.whole_reads

    trio.run(main)


def test_a_block_file_damaged_after_its_check_is_read_whole_dropped_and_fetched_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def then(store: BlobStore, source: OneBlob, cache: CountingCache, path: Path) -> None:
        flip_bit(path, AT % BLOCK + 10)  # in the page read
        sent = source.sent
        with caplog.at_level(logging.WARNING):
            assert await read(store, source, AT) == source.data[AT : AT + PAGE]
        assert "is damaged" in caplog.text
        assert source.sent == sent + BLOCK  # the block downloaded again

    with_checked_block(tmp_path, then)


def test_a_block_file_cut_short_after_its_check_is_fetched_again(tmp_path: Path) -> None:
    async def then(store: BlobStore, source: OneBlob, cache: CountingCache, path: Path) -> None:
        os.truncate(path, AT % BLOCK)  # shorter than the page read
        sent = source.sent
        assert await read(store, source, AT) == source.data[AT : AT + PAGE]
        assert source.sent == sent + BLOCK

    with_checked_block(tmp_path, then)


def test_a_block_evicted_by_another_process_is_fetched_again(tmp_path: Path) -> None:
    async def then(store: BlobStore, source: OneBlob, cache: CountingCache, path: Path) -> None:
        path.unlink()
        sent = source.sent
        assert await read(store, source, AT) == source.data[AT : AT + PAGE]
        assert source.sent == sent + BLOCK

    with_checked_block(tmp_path, then)


def test_a_block_evicted_while_its_pages_are_read_is_read_from_the_open_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def then(store: BlobStore, source: OneBlob, cache: CountingCache, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # its pages come from the disk
        os.close(fd)
        preadv = os.preadv

        def evicted_once_open(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
            if not flags:  # the read that waits for the disk, in a worker thread
                path.unlink(missing_ok=True)  # by another process, between open and read
            return preadv(fd, buffers, offset, flags)

        monkeypatch.setattr(pages_module.os, "preadv", evicted_once_open)
        sent, whole = source.sent, cache.whole_reads
        assert await read(store, source, AT) == source.data[AT : AT + PAGE]
        assert (source.sent, cache.whole_reads) == (sent, whole)
        assert not path.exists()

    with_checked_block(tmp_path, then)


def test_page_sums_are_kept_for_the_most_recently_used_blocks() -> None:
    checked = CheckedPages(max_blocks=2)
    for index in range(3):
        checked.remember(("d", index), bytes(PAGE + 1))
    assert checked.get(("d", 0)) is None
    assert checked.get(("d", 2)) is not None and len(checked.get(("d", 2)) or []) == 2
    checked.forget("d")
    assert checked.get(("d", 2)) is None


def test_bytes_held_are_read_for_a_push_without_a_request(tmp_path: Path) -> None:
    """What a push into the kernel's page cache reads: a block in memory, or a checked block's
    pages from disk; a block not checked in this process is not held, and nothing is fetched."""

    async def then(store: BlobStore, source: OneBlob, cache: CountingCache, path: Path) -> None:
        digest, size, data, sent = source.digest, source.size, source.data, source.sent
        start = CHECKED * BLOCK
        assert await store.read_held(digest, size, start, BLOCK) == data[start : start + BLOCK]
        assert (digest, CHECKED) not in store.memory  # its pages read, the block left out
        assert await read(store, source, 0) == data[:PAGE]  # block 0: checked, in memory
        assert await store.read_held(digest, size, 100, BLOCK - 100) == data[100:BLOCK]
        assert await store.read_held(digest, size, 100, BLOCK) is None  # block 1 is not held
        assert source.sent == sent

    with_checked_block(tmp_path, then)


@pytest.mark.parametrize("fault", ["damaged", "cut short", "evicted"])
def test_a_block_file_faulty_after_its_check_is_not_held(tmp_path: Path, fault: str) -> None:
    """A push never serves a byte the block file lost after its check: the read for it finds
    nothing held (and fetches nothing); a reader's own read then fetches the block again."""

    async def then(store: BlobStore, source: OneBlob, cache: CountingCache, path: Path) -> None:
        if fault == "damaged":
            flip_bit(path, BLOCK - 100)
        elif fault == "cut short":
            os.truncate(path, BLOCK // 2)
        else:
            path.unlink()
        sent = source.sent
        assert await store.read_held(source.digest, source.size, CHECKED * BLOCK, BLOCK) is None
        assert source.sent == sent
        end = (CHECKED + 1) * BLOCK
        assert await read(store, source, end - 100, 100) == source.data[end - 100 : end]

    with_checked_block(tmp_path, then)
