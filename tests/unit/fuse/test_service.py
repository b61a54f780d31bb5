"""The serve root's operations without a kernel: a loader of ours counts what is asked of it,
and its kits' one layer fails where a test says (the source, the index, the cache); trio's
MockClock runs the TTLs and deadlines."""

from __future__ import annotations

import errno
import logging
import stat
from collections.abc import Callable
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from modelkitfs.archive import Entry as Member
from modelkitfs.archive import EntryKind, LayerIndex
from modelkitfs.errors import (
    AuthenticationError,
    GaveUp,
    NotFound,
    RegistryError,
    TransientError,
    Unreachable,
)
from modelkitfs.fuse.loads import NEGATIVE_ENTRIES
from modelkitfs.fuse.namespace import NAMES_KEPT, ROOT, Entry, Kind
from modelkitfs.fuse.operations import STATS_XATTR
from modelkitfs.fuse.service import PACE, SLOT_BITS, ServiceOperations
from modelkitfs.kit.tree import ROOT_INODE, KitTree, TreeLayer
from modelkitfs.reference import Reference

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
KITFILE = b"manifestVersion: 1.0.0\n"


class Layer:
    """A layer of one file, ``weights.bin``, holding its kit's digest; its index and its reads
    fail (or take ``delay``) while its loader says so."""

    def __init__(self, loader: Loader, data: bytes) -> None:
        self.loader, self.data = loader, data
        self.digest, self.size = "sha256:" + data.hex()[:64].ljust(64, "0"), len(data)
        self.closed = False

    async def index(self) -> LayerIndex:
        self.loader.indexed += 1
        await trio.sleep(self.loader.index_delay)
        if self.loader.index_failure is not None:
            raise self.loader.index_failure
        return LayerIndex([Member("weights.bin", EntryKind.FILE, 0o644, self.size, 0)])

    async def read(self, offset: int, length: int, *args: Any, **kwargs: Any) -> bytes:
        if self.loader.read_failure is not None:
            raise self.loader.read_failure
        return self.data[offset : offset + length]

    def read_now(self, *args: Any) -> None:
        return None  # never at once: every read goes through the deadline

    def block_around(self, offset: int) -> None:
        return None  # not cached in blocks: nothing pushed into the page cache

    async def aclose(self) -> None:
        self.closed = True


class Loader:
    def __init__(self) -> None:
        self.tags: dict[str, str | Exception] = {"llm:v1": D1}
        self.resolved: list[str] = []
        self.loaded: list[str] = []
        self.layers: list[Layer] = []
        self.indexed = 0
        self.failure: Exception | None = None  # of the source: the manifest, the config
        self.index_failure: Exception | None = None
        self.read_failure: Exception | None = None
        self.index_delay = 0.0

    async def resolve(self, reference: Reference) -> str:
        self.resolved.append(str(reference))
        await trio.sleep(0.01)
        found = self.tags.get(f"{reference.repository}:{reference.tag}", NotFound("no such tag"))
        if isinstance(found, Exception):
            raise found
        return found

    async def load(self, reference: Reference) -> tuple[KitTree, Callable[[], dict[str, Any]]]:
        self.loaded.append(str(reference))
        await trio.sleep(0.01)
        if self.failure is not None:
            raise self.failure
        assert reference.digest is not None
        self.layers.append(layer := Layer(self, reference.digest.encode()))
        tree = KitTree([TreeLayer(layer, "weights.bin", "model")], KITFILE)  # type: ignore[arg-type]
        return tree, dict


def run(test: Callable[[ServiceOperations, Loader], Any], **settings: float) -> None:
    async def main() -> None:
        loader = Loader()
        service = ServiceOperations(loader, timeout=5, **settings)
        service.let_go = lambda parent, name: None  # the kernel keeps what it was answered
        await test(service, loader)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def path(service: ServiceOperations, *names: str) -> pyfuse3.EntryAttributes:
    inode = ROOT
    for name in names:
        attributes = await service.lookup(inode, name.encode())
        inode = attributes.st_ino
    return attributes


def test_a_tag_is_a_symlink_resolved_once_per_ttl() -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        link = await path(service, "registry.example", "llm:v1")
        assert stat.S_ISLNK(link.st_mode) and link.entry_timeout == 60
        assert await service.readlink(link.st_ino, None) == f"llm@{D1}".encode()
        await path(service, "registry.example", "llm:v1")
        assert loader.resolved == ["registry.example/llm:v1"]
        loader.tags["llm:v1"] = D2
        await trio.sleep(61)
        await path(service, "registry.example", "llm:v1")
        assert await service.readlink(link.st_ino, None) == f"llm@{D2}".encode()
        assert len(loader.resolved) == 2
        assert loader.loaded == []  # a tag alone loads nothing

    run(test)


def test_concurrent_lookups_of_a_new_kit_load_it_once() -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        found: list[int] = []

        async def look() -> None:
            found.append((await path(service, "registry.example", f"llm@{D1}")).st_ino)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(look)
        assert loader.loaded == [f"registry.example/llm@{D1}"]
        assert set(found) == {(1 << SLOT_BITS) + ROOT_INODE}
        kitfile = await service.lookup(found[0], b"Kitfile")
        assert kitfile.st_ino >> SLOT_BITS == 1
        parent = await service.lookup(found[0], b"..")
        assert parent.st_ino == (await path(service, "registry.example")).st_ino

    run(test)


def test_an_unknown_reference_is_enoent_and_asked_again_only_after_the_negative_ttl() -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        for _ in range(100):
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await path(service, "registry.example", "missing:v1")
            assert caught.value.errno == errno.ENOENT
        assert len(loader.resolved) == 1
        await trio.sleep(31)
        with pytest.raises(pyfuse3.FUSEError):
            await path(service, "registry.example", "missing:v1")
        assert len(loader.resolved) == 2

    run(test, negative_ttl=30)


@pytest.mark.parametrize(
    ("failure", "code"),
    [(AuthenticationError("refused"), errno.EACCES), (Unreachable("no route"), errno.EIO)],
)
def test_refused_and_unreachable_registries(failure: Exception, code: int) -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        loader.failure = failure
        for _ in range(2):
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await path(service, "registry.example", f"llm@{D1}")
            assert caught.value.errno == code
        assert len(loader.loaded) == 2  # not remembered: a login or the network may come back
        loader.failure = None
        assert (await path(service, "registry.example", f"llm@{D1}")).st_ino >> SLOT_BITS

    run(test)


def test_impossible_names_ask_nothing() -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        for name in (".git", "__pycache__", "HEAD~1"):
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await path(service, "registry.example", name)
            assert caught.value.errno == errno.ENOENT
        assert loader.resolved == loader.loaded == []

    run(test)


def test_idle_kits_are_unloaded_unless_open_and_come_back_under_the_same_inodes() -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        root = (await path(service, "registry.example", f"llm@{D1}")).st_ino
        kitfile = (await service.lookup(root, b"Kitfile")).st_ino
        handle = await service.open(kitfile, 0, None)
        await trio.sleep(11)
        await service.sweep()
        assert service.kits[1].operations is not None  # a file is open: it stays
        assert await service.read(handle.fh, 0, 100) == b"manifestVersion: 1.0.0\n"
        await service.release(handle.fh)
        await trio.sleep(11)
        await service.sweep()
        assert service.kits[1].operations is None and len(loader.loaded) == 1
        # The kernel still holds the file's inode (a bind mount, a working directory): it
        # names the same file, in a tree built again.
        attributes = await service.getattr(kitfile)
        assert attributes.st_ino == kitfile and attributes.st_size == 23
        assert len(loader.loaded) == 2
        assert (await service.lookup(root, b"Kitfile")).st_ino == kitfile
        again = (await path(service, "registry.example", f"llm@{D1}")).st_ino
        assert again == root and len(loader.loaded) == 2

    run(test, idle=10)


async def read_weights(service: ServiceOperations, inode: int) -> bytes:
    handle = await service.open(inode, 0, None)
    try:
        return await service.read(handle.fh, 0, 1000)
    finally:
        await service.release(handle.fh)


async def failure(call: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await call
    return caught.value.errno


STEPS = {
    "source": ("failure", Unreachable("registry.example: connection refused")),
    "cache": ("failure", OSError(errno.EIO, "Input/output error")),
    "index": ("index_failure", GaveUp("503 from the registry", TransientError("503"))),
    "read": ("read_failure", OSError(errno.EIO, "Input/output error")),
}


@pytest.mark.parametrize("step", STEPS)
def test_a_kit_that_fails_to_load_again_fails_that_request_alone(
    step: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The kit was unloaded while the kernel still holds its files (a bind mount): building it
    again fails at one step. That request is EIO, logged with its kit; another kit reads on;
    once the fault is gone the same inode reads again."""

    async def test(service: ServiceOperations, loader: Loader) -> None:
        kit = await path(service, "registry.example", f"llm@{D1}")
        weights = (await service.lookup(kit.st_ino, b"weights.bin")).st_ino
        assert await read_weights(service, weights) == D1.encode()
        await trio.sleep(11)
        await service.sweep()
        assert service.kits[1].operations is None  # unloaded
        attribute, fault = STEPS[step]
        setattr(loader, attribute, fault)
        caplog.clear()
        if step == "read":  # the tree builds again; its read fails
            assert await failure(read_weights(service, weights)) == errno.EIO
        else:
            assert await failure(service.open(weights, 0, None)) == errno.EIO
            assert await failure(service.getattr(kit.st_ino)) == errno.EIO
        assert f"registry.example/llm@{D1}" in caplog.text
        setattr(loader, attribute, None)
        other = await path(service, "registry.example", f"llm@{D2}")
        inode = (await service.lookup(other.st_ino, b"weights.bin")).st_ino
        assert await read_weights(service, inode) == D2.encode()
        assert await read_weights(service, weights) == D1.encode()  # the same inode, again

    run(test, idle=10)


def test_loading_a_kit_again_waits_no_longer_than_the_timeout() -> None:
    """Its layers indexed again (they were not in the cache) take longer than the timeout:
    the request fails at the timeout, the load goes on and serves the next."""

    async def test(service: ServiceOperations, loader: Loader) -> None:
        kit = await path(service, "registry.example", f"llm@{D1}")
        weights = (await service.lookup(kit.st_ino, b"weights.bin")).st_ino
        await trio.sleep(11)
        await service.sweep()
        loader.index_delay = 100
        started = trio.current_time()
        assert await failure(service.open(weights, 0, None)) == errno.EIO
        assert trio.current_time() - started == pytest.approx(service.timeout, abs=0.1)
        await trio.sleep(100)
        assert await read_weights(service, weights) == D1.encode()
        assert len(loader.loaded) == 2 and loader.indexed == 2  # loaded once again, not twice

    run(test, idle=10)


def test_a_handler_that_fails_unexpectedly_answers_eio_and_logs_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> dict[str, Any]:
        raise RuntimeError("stats broke")

    async def test(service: ServiceOperations, loader: Loader) -> None:
        service.stats = broken
        assert await failure(service.getxattr(ROOT, STATS_XATTR, None)) == errno.EIO
        await service.forget([(ROOT, 1), (12345 << SLOT_BITS, 1), (999, 1)])  # never raises

    run(test)
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failed) == 1 and "getxattr failed unexpectedly" in failed[0].getMessage()
    assert failed[0].exc_info is not None


class Kernel:
    """What the kernel does when the service asks it to let go of an entry it does not use:
    it forgets the entry, and what it held under it."""

    def __init__(self, service: ServiceOperations) -> None:
        self.service = service
        self.asked: list[tuple[int, str]] = []
        service.let_go = lambda parent, name: self.asked.append((parent, name))

    async def let_go(self) -> None:
        while self.asked:
            parent, name = self.asked.pop()
            folder = self.service.namespace.get(parent)
            if folder is not None and (inode := folder.children.get(name)) is not None:
                await self.forget(self.service.namespace.entries[inode])

    async def forget(self, entry: Entry) -> None:
        for child in list(entry.children.values()):
            await self.forget(self.service.namespace.entries[child])
        if entry.kind is not Kind.KIT:  # a kit's name: the kernel holds the kit's own inodes
            await self.service.forget([(entry.inode, entry.holds)])


def test_the_kernel_is_asked_to_let_go_of_names_beyond_the_last_ones() -> None:
    """200,000 bogus names, at the root and a level down: the service holds what the kernel
    holds, and asks it to let go of names that hold no kit beyond the last NAMES_KEPT."""

    async def test(service: ServiceOperations, loader: Loader) -> None:
        kernel = Kernel(service)
        for n in range(100_000):
            await service.lookup(ROOT, f"x{n}".encode())
            folder = await service.lookup(ROOT, f"y{n}".encode())
            await service.lookup(folder.st_ino, b"z")
            await kernel.let_go()
            assert len(service.namespace.entries) <= NAMES_KEPT + 2
        assert max(service.namespace.entries) <= NAMES_KEPT + 3  # numbers given back are reused
        await kernel.forget(service.namespace.entries[ROOT])  # at last, all of it
        assert list(service.namespace.entries) == [ROOT]
        assert loader.resolved == loader.loaded == []

    run(test)


def test_unknown_references_cost_a_bounded_negative_cache() -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        count = NEGATIVE_ENTRIES + 2000
        for n in range(count):
            assert await failure(path(service, f"missing:t{n}")) == errno.ENOENT
        assert len(loader.resolved) == count
        assert list(service.namespace.entries) == [ROOT]  # nothing held
        assert len(service.loads._unknown) == NEGATIVE_ENTRIES

    run(test, negative_ttl=3600)


def test_a_thousand_names_of_one_digest_load_it_once() -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        roots = [
            (await path(service, "registry.example", f"llm:t{n}@{D1}")).st_ino for n in range(1000)
        ]
        assert len(set(roots)) == 1000  # a folder each: no directory has two names
        assert loader.loaded == [f"registry.example/llm@{D1}"]
        assert service.loads.loaded == 1
        for root in (roots[0], roots[-1]):
            inode = (await service.lookup(root, b"weights.bin")).st_ino
            assert await read_weights(service, inode) == D1.encode()
        assert loader.indexed == 1  # one tree
        # Another repository asks its own registry, with its own authorization.
        await path(service, "registry.example", f"other@{D1}")
        assert len(loader.loaded) == 2
        await service.forget([(root, 1) for root in roots])
        await service.forget([(root, 2) for root in (roots[0], roots[-1])])  # the file lookups
        assert len(service.kits) == 1  # other@
        await trio.sleep(11)
        await service.sweep()
        assert list(service.loads.kits) == [f"registry.example/other@{D1}"]
        assert loader.layers[0].closed

    run(test, idle=10)


def test_an_invalid_digest_costs_no_request() -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        for name in (
            f"llm@sha256:{'A' * 64}",
            f"llm:v1@sha256:{'a' * 63}",
            f"llm@sha512:{'a' * 128}",
        ):
            for _ in range(3):
                assert await failure(path(service, "registry.example", name)) == errno.ENOENT
        assert loader.loaded == loader.resolved == []

    run(test)


def test_a_tag_is_served_from_its_last_digest_while_its_registry_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        link = await path(service, "registry.example", "llm:v1")
        await service.forget([(link.st_ino, 1)])  # the kernel let go of the link meanwhile
        loader.tags["llm:v1"] = GaveUp("503 Service Unavailable", TransientError("503"))
        for _ in range(3):
            await trio.sleep(61)
            link = await path(service, "registry.example", "llm:v1")
            assert await service.readlink(link.st_ino, None) == f"llm@{D1}".encode()
        said = [r for r in caplog.records if "llm:v1" in r.getMessage()]
        assert [r.levelno for r in said] == [logging.WARNING]  # one warning for the outage
        assert "serving the kit it named last" in said[0].getMessage()
        loader.tags["llm:v1"] = D2  # back, and moved
        await trio.sleep(61)
        link = await path(service, "registry.example", "llm:v1")
        assert await service.readlink(link.st_ino, None) == f"llm@{D2}".encode()
        # A registry that answers "no such tag", or refuses, is believed.
        for answer, code in (
            (AuthenticationError("denied"), errno.EACCES),
            (NotFound("gone"), errno.ENOENT),
        ):
            loader.tags["llm:v1"] = answer
            await trio.sleep(61)
            assert await failure(path(service, "registry.example", "llm:v1")) == code
        loader.tags["llm:v1"] = Unreachable("connection refused")
        await trio.sleep(31)
        assert await failure(path(service, "registry.example", "llm:v1")) == errno.EIO

    run(test, negative_ttl=30)


def test_a_failure_not_of_reach_is_no_outage() -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        await path(service, "registry.example", "llm:v1")
        loader.tags["llm:v1"] = RegistryError("the manifest is malformed")
        await trio.sleep(61)
        assert await failure(path(service, "registry.example", "llm:v1")) == errno.EIO

    run(test)


def test_an_idle_kit_is_let_go_of_and_goes_once_the_kernel_forgets_it() -> None:
    async def test(service: ServiceOperations, loader: Loader) -> None:
        kernel = Kernel(service)
        folder = await path(service, "registry.example")
        root = (await service.lookup(folder.st_ino, f"llm@{D1}".encode())).st_ino
        await trio.sleep(11)
        await service.sweep()
        assert kernel.asked == [(folder.st_ino, f"llm@{D1}")]  # its name, if not in use
        await service.forget([(root, 1)])  # the kernel did let go
        assert service.kits == {} and loader.layers[0].closed
        await service.sweep()
        assert service.loads.kits == {}
        await kernel.forget(service.namespace.entries[ROOT])
        assert list(service.namespace.entries) == [ROOT]

    run(test, idle=10)


def test_a_flood_of_new_names_waits_for_the_kernel_to_let_go() -> None:
    """The kernel lets go in a thread of its own, which a flood of names may leave behind:
    beyond NAMES_KEPT waiting to be let go of, a new name waits (a little) for it."""

    async def test(service: ServiceOperations, loader: Loader) -> None:
        kernel = Kernel(service)  # behind: lets go only when told
        for n in range(2 * NAMES_KEPT + 1):
            await service.lookup(ROOT, f"x{n}".encode())
        assert service.namespace.letting_go == NAMES_KEPT + 1
        started = trio.current_time()
        await service.lookup(ROOT, b"late")  # the kernel does not catch up: at most PACE
        assert trio.current_time() - started == pytest.approx(PACE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.lookup, ROOT, b"later")
            await trio.testing.wait_all_tasks_blocked()
            await kernel.let_go()  # it catches up: the name goes on at once
            started = trio.current_time()
        assert trio.current_time() == started
        assert len(service.namespace.entries) <= NAMES_KEPT + 3

    run(test)


def test_a_kit_s_inode_numbers_are_never_another_kit_s() -> None:
    """A kit the kernel has forgotten leaves its slot unused: a push into the page cache (or an
    invalidation) still on its way for one of its inodes can never land on another kit's file."""

    async def test(service: ServiceOperations, loader: Loader) -> None:
        folder = await path(service, "registry.example")
        first = (await service.lookup(folder.st_ino, f"llm@{D1}".encode())).st_ino
        await service.forget([(first, 1)])  # the kernel let go of the kit
        assert service.kits == {}
        second = (await service.lookup(folder.st_ino, f"llm@{D2}".encode())).st_ino
        assert second >> SLOT_BITS != first >> SLOT_BITS

    run(test)
