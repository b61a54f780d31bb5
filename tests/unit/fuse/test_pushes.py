"""Pushes into the kernel's page cache: the block around a small read, once, never past what
is held, re-pushed only once the kernel has let it go a while, and given up for a file whose
pages keep coming back at once. The kernel's side is a recording double; time is trio's
MockClock."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from modelkitfs.fuse import pushes as pushes_module
from modelkitfs.fuse.pushes import GIVE_UP, QUEUED, REPUSH_AFTER, SETTLE, SMALL_READ, Pushes

BLOCK = (1 << 20, 2 << 20)  # the file's second MiB


class Kernel:
    """Records what is stored into its page cache; fails on demand."""

    def __init__(self) -> None:
        self.stored: list[tuple[int, int, bytes]] = []
        self.failure: OSError | None = None

    def store(self, inode: int, offset: int, data: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        self.stored.append((inode, offset, data))


def held(data: bytes | None = b"x" * (1 << 20)) -> Callable[[], Awaitable[bytes | None]]:
    async def read() -> bytes | None:
        return data

    return read


def run(test: Callable[[Pushes, Kernel, trio.testing.MockClock], Awaitable[None]]) -> None:
    kernel, clock = Kernel(), trio.testing.MockClock()

    async def main() -> None:
        pushes = Pushes(kernel.store, threaded=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pushes.run)
            await test(pushes, kernel, clock)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)


async def settled() -> None:
    await trio.testing.wait_all_tasks_blocked()


def test_a_small_read_pushes_the_block_around_it_once() -> None:
    async def test(pushes: Pushes, kernel: Kernel, clock: trio.testing.MockClock) -> None:
        pushes.after_read(7, BLOCK, (BLOCK[0] + 4096, BLOCK[0] + 8192), held())
        pushes.after_read(7, BLOCK, (BLOCK[0], BLOCK[0] + 4096), held())  # already on its way
        await settled()
        assert [(i, o, len(d)) for i, o, d in kernel.stored] == [(7, BLOCK[0], 1 << 20)]
        assert pushes.pushed_bytes == 1 << 20

    run(test)


@pytest.mark.parametrize(
    "request_",
    [(BLOCK[0], BLOCK[0] + SMALL_READ + 4096), (BLOCK[0], BLOCK[1]), (0, BLOCK[1])],
    ids=["a large read: a reader in order", "the block itself", "more than the block"],
)
def test_no_push_for_a_large_read_or_one_that_holds_the_block(request_: tuple[int, int]) -> None:
    async def test(pushes: Pushes, kernel: Kernel, clock: trio.testing.MockClock) -> None:
        pushes.after_read(7, BLOCK, request_, held())
        await settled()
        assert kernel.stored == []

    run(test)


def test_nothing_is_pushed_that_is_not_held_and_a_later_read_tries_again() -> None:
    async def test(pushes: Pushes, kernel: Kernel, clock: trio.testing.MockClock) -> None:
        pushes.after_read(7, BLOCK, (BLOCK[0], BLOCK[0] + 4096), held(None))
        await settled()
        assert kernel.stored == []
        pushes.after_read(7, BLOCK, (BLOCK[0], BLOCK[0] + 4096), held())
        await settled()
        assert len(kernel.stored) == 1

    run(test)


def test_a_block_is_pushed_again_only_once_the_kernel_has_let_it_go_a_while() -> None:
    async def test(pushes: Pushes, kernel: Kernel, clock: trio.testing.MockClock) -> None:
        read = (BLOCK[0], BLOCK[0] + 4096)
        pushes.after_read(7, BLOCK, read, held())
        await settled()
        clock.jump(REPUSH_AFTER / 2)
        pushes.after_read(7, BLOCK, read, held())  # back at once: not pushed again
        await settled()
        assert len(kernel.stored) == 1
        clock.jump(REPUSH_AFTER)
        pushes.after_read(7, BLOCK, read, held())  # dropped a while after: pushed again
        await settled()
        assert len(kernel.stored) == 2

    run(test)


def test_a_file_whose_pushed_pages_keep_coming_back_gets_no_more_pushes() -> None:
    async def test(pushes: Pushes, kernel: Kernel, clock: trio.testing.MockClock) -> None:
        read = (BLOCK[0], BLOCK[0] + 4096)
        pushes.after_read(7, BLOCK, read, held())
        await settled()
        for _ in range(3 * GIVE_UP):  # reads already on their way as it landed: not counted
            pushes.after_read(7, BLOCK, read, held())
        assert pushes.given_up == 0
        clock.jump(SETTLE)
        for _ in range(GIVE_UP + 1):
            pushes.after_read(7, BLOCK, read, held())
        assert pushes.given_up == 1
        other = (BLOCK[1], BLOCK[1] + (1 << 20))
        pushes.after_read(7, other, (other[0], other[0] + 4096), held())  # nor its other blocks
        pushes.after_read(8, BLOCK, read, held())  # another file still gets its own
        await settled()
        assert [(i, o) for i, o, _ in kernel.stored] == [(7, BLOCK[0]), (8, BLOCK[0])]

    run(test)


def test_a_full_queue_drops_pushes_and_never_keeps_a_reader_waiting() -> None:
    kernel = Kernel()

    async def main() -> None:
        pushes = Pushes(kernel.store, threaded=False)  # not running: nothing leaves the queue
        for i in range(QUEUED + 5):
            block = (i << 20, (i + 1) << 20)
            pushes.after_read(7, block, (block[0], block[0] + 4096), held())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pushes.run)
            await settled()
            nursery.cancel_scope.cancel()
        assert sorted(o >> 20 for _, o, _ in kernel.stored) == list(range(QUEUED))

    trio.run(main)


@pytest.mark.parametrize("failure", ["forgotten inode", "other store error", "read error"])
def test_a_failed_push_is_dropped_and_the_next_goes_on(
    failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_read() -> bytes | None:
        raise RuntimeError("the blob store is closed")

    async def test(pushes: Pushes, kernel: Kernel, clock: trio.testing.MockClock) -> None:
        read = (BLOCK[0], BLOCK[0] + 4096)
        if failure == "read error":
            pushes.after_read(7, BLOCK, read, failing_read)
        else:
            kernel.failure = OSError(errno.ENOENT if "forgotten" in failure else errno.EIO, "x")
            pushes.after_read(7, BLOCK, read, held())
        await settled()
        kernel.failure = None
        pushes.after_read(7, BLOCK, read, held())  # not counted as pushed: tried again
        await settled()
        assert [(i, o) for i, o, _ in kernel.stored] == [(7, BLOCK[0])]

    run(test)


def test_the_files_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pushes_module, "FILES", 3)

    async def test(pushes: Pushes, kernel: Kernel, clock: trio.testing.MockClock) -> None:
        for inode in range(10):
            pushes.after_read(inode, BLOCK, (BLOCK[0], BLOCK[0] + 4096), held())
            await settled()
        assert len(pushes._files) == 3
        assert len(kernel.stored) == 10

    run(test)


def test_a_push_counts_from_when_it_was_asked_for_not_when_the_loop_next_looks() -> None:
    """A file read at random is soon whole in the page cache: no read reaches the daemon, which
    notes what was stored only at the next read, maybe much later (after the page cache was
    dropped). That read must find its block pushed long ago, and push it again."""

    async def test(pushes: Pushes, kernel: Kernel, clock: trio.testing.MockClock) -> None:
        read = (BLOCK[0], BLOCK[0] + 4096)
        pushes.after_read(7, BLOCK, read, held())
        await settled()  # stored; nobody has looked since
        clock.jump(REPUSH_AFTER * 3)
        pushes.after_read(7, BLOCK, read, held())
        await settled()
        assert len(kernel.stored) == 2 and pushes.given_up == 0

    run(test)


def test_reads_of_a_page_the_push_left_out_do_not_count_against_the_file() -> None:
    """A page a block holds only in part is not pushed (the kernel would not keep it): its reads
    keep coming, and must not pass for pages the page cache could not keep."""

    async def test(pushes: Pushes, kernel: Kernel, clock: trio.testing.MockClock) -> None:
        pushes.after_read(7, BLOCK, (BLOCK[0], BLOCK[0] + 4096), held())
        await settled()
        clock.jump(SETTLE)
        straddling = (BLOCK[1] - 100, BLOCK[1] + 3996)
        for _ in range(2 * GIVE_UP):
            pushes.after_read(7, BLOCK, straddling, held())
        assert pushes.given_up == 0 and len(kernel.stored) == 1

    run(test)
