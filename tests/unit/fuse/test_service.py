"""The serve root's operations without a kernel: a loader of ours counts what is asked of it,
trio's MockClock runs the TTLs."""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from modelkitfs.errors import AuthenticationError, NotFound, Unreachable
from modelkitfs.fuse.namespace import ROOT
from modelkitfs.fuse.service import SLOT_BITS, ServiceOperations
from modelkitfs.kit.tree import ROOT_INODE, KitTree
from modelkitfs.reference import Reference

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


class Loader:
    def __init__(self) -> None:
        self.tags: dict[str, str | Exception] = {"llm:v1": D1}
        self.resolved: list[str] = []
        self.loaded: list[str] = []
        self.failure: Exception | None = None

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
        return KitTree([], b"manifestVersion: 1.0.0\n"), dict


def run(test: Callable[[ServiceOperations, Loader], Any], **settings: float) -> None:
    async def main() -> None:
        loader = Loader()
        await test(ServiceOperations(loader, timeout=5, **settings), loader)

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
