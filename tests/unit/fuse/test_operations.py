"""The FUSE handlers driven directly, without a kernel: over a kit in a registry in memory,
lookup, getattr, readdir, open, read and the extended attributes answer what a mount's system
calls would get, and failures are the errno a reader sees."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyfuse3
import pytest
import trio

from modelkitfs.blobs import Blob
from modelkitfs.fuse import KitOperations
from modelkitfs.fuse.operations import STATS_XATTR, XATTR
from modelkitfs.kit import ROOT_INODE
from tests.support.kitbuilder import Artifact, build_modelkit
from tests.unit.memory_kit import MemoryKit, memory_kit

WEIGHTS = np.random.default_rng(2).bytes(200_000)
KITFILE = {
    "manifestVersion": "1.0.0",
    "package": {"name": "ops"},
    "model": {"name": "m", "path": "model/weights.bin"},
    "docs": [{"path": "README.md"}],
}


@pytest.fixture
def artifact(tmp_path: Path) -> Artifact:
    context = tmp_path / "context"
    (context / "model").mkdir(parents=True)
    (context / "model/weights.bin").write_bytes(WEIGHTS)
    (context / "README.md").write_bytes(b"# ops\n")
    return build_modelkit(context, KITFILE)


def run(
    tmp_path: Path,
    artifact: Artifact,
    body: Callable[[KitOperations, MemoryKit], Awaitable[Any]],
) -> Any:
    async def main() -> Any:
        async with memory_kit(tmp_path / "cache", artifact) as memory:
            operations = KitOperations(memory.kit.tree, lambda: {"requests": 7}, timeout=30)
            return await body(operations, memory)

    return trio.run(main)


async def listing(operations: KitOperations, inode: int, monkeypatch: pytest.MonkeyPatch) -> list:
    """What readdir replies for directory ``inode``: (name, inode, next id)."""
    replies: list[tuple[bytes, int, int]] = []

    def reply(token: object, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
        replies.append((name, attrs.st_ino, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await operations.opendir(inode, None)
    await operations.readdir(fh, 0, None)
    await operations.releasedir(fh)
    return replies


async def path_inode(operations: KitOperations, path: str) -> int:
    inode = ROOT_INODE
    for name in path.split("/"):
        inode = (await operations.lookup(inode, os.fsencode(name))).st_ino
    return inode


def test_lookup_getattr_and_read_give_the_files(tmp_path: Path, artifact: Artifact) -> None:
    async def body(operations: KitOperations, memory: MemoryKit) -> tuple:
        model = await operations.lookup(ROOT_INODE, b"model")
        weights = await operations.lookup(model.st_ino, b"weights.bin")
        attrs = await operations.getattr(weights.st_ino)
        info = await operations.open(weights.st_ino, os.O_RDONLY, None)
        data = await operations.read(info.fh, 0, len(WEIGHTS) + 10)
        middle = await operations.read(info.fh, 1000, 5000)
        up = await operations.lookup(model.st_ino, b"..")
        return model.st_mode, attrs.st_mode, attrs.st_size, data, middle, up.st_ino, info

    mode, file_mode, size, data, middle, parent, info = run(tmp_path, artifact, body)
    assert stat.S_ISDIR(mode) and stat.S_ISREG(file_mode) and size == len(WEIGHTS)
    assert data == WEIGHTS and middle == WEIGHTS[1000:6000]
    assert parent == ROOT_INODE and info.keep_cache


def test_readdir_lists_every_child_in_order_and_resumes(
    tmp_path: Path, artifact: Artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(operations: KitOperations, memory: MemoryKit) -> tuple[list, list]:
        entries = await listing(operations, ROOT_INODE, monkeypatch)
        fh = await operations.opendir(ROOT_INODE, None)
        resumed: list[bytes] = []
        monkeypatch.setattr(
            pyfuse3, "readdir_reply", lambda token, name, attrs, next_id: resumed.append(name)
        )
        await operations.readdir(fh, 2, None)
        return entries, resumed

    entries, resumed = run(tmp_path, artifact, body)
    assert [(name, next_id) for name, _, next_id in entries] == [
        (b"Kitfile", 1),
        (b"README.md", 2),
        (b"model", 3),
    ]
    assert resumed == [b"model"]


def test_missing_names_and_inodes_are_enoent(tmp_path: Path, artifact: Artifact) -> None:
    async def body(operations: KitOperations, memory: MemoryKit) -> list[int]:
        codes = []
        for call in (
            operations.lookup(ROOT_INODE, b"nothing"),
            operations.getattr(9999),
            operations.opendir(9999, None),
        ):
            with pytest.raises(pyfuse3.FUSEError) as failure:
                await call
            codes.append(failure.value.errno)
        return codes

    assert run(tmp_path, artifact, body) == [errno.ENOENT] * 3


def test_writes_are_refused_and_directories_are_not_files(
    tmp_path: Path, artifact: Artifact
) -> None:
    async def body(operations: KitOperations, memory: MemoryKit) -> list[int]:
        readme = await path_inode(operations, "README.md")
        codes = []
        for call in (
            operations.open(readme, os.O_WRONLY, None),
            operations.open(readme, os.O_RDONLY | os.O_TRUNC, None),
            operations.open(ROOT_INODE, os.O_RDONLY, None),
            operations.opendir(readme, None),
        ):
            with pytest.raises(pyfuse3.FUSEError) as failure:
                await call
            codes.append(failure.value.errno)
        assert not await operations.access(readme, os.W_OK, None)
        assert await operations.access(readme, os.R_OK, None)
        return codes

    assert run(tmp_path, artifact, body) == [errno.EROFS, errno.EROFS, errno.EISDIR, errno.ENOTDIR]


def test_a_read_that_fails_is_eio_with_the_reason_logged(
    tmp_path: Path, artifact: Artifact, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(operations: KitOperations, memory: MemoryKit) -> int:
        weights = await path_inode(operations, "model/weights.bin")
        memory.registry.ranges.blobs.clear()  # the registry lost the blob
        with pytest.raises(pyfuse3.FUSEError) as failure:
            await operations.read(weights, 150_000, 4096)  # not read by the listing's walk
        return failure.value.errno

    assert run(tmp_path, artifact, body) == errno.EIO
    assert "read of 'model/weights.bin' failed" in caplog.text and "not found" in caplog.text


def test_extended_attributes_say_where_bytes_come_from(tmp_path: Path, artifact: Artifact) -> None:
    layers = json.loads(artifact.manifest)["layers"]
    model_layer = next(d for d in layers if ".model." in d["mediaType"])

    async def body(operations: KitOperations, memory: MemoryKit) -> dict[str, Any]:
        weights = await path_inode(operations, "model/weights.bin")
        await operations.read(weights, 0, len(WEIGHTS))
        await memory.store.flush()  # its blocks are written to the cache
        names = await operations.listxattr(weights, None)
        values = {
            n.removeprefix(XATTR).decode(): (await operations.getxattr(weights, n, None)).decode()
            for n in names
        }
        values["stats"] = await operations.getxattr(ROOT_INODE, STATS_XATTR, None)
        kitfile = await path_inode(operations, "Kitfile")
        values["kitfile"] = await operations.getxattr(kitfile, XATTR + b"entry", None)
        with pytest.raises(pyfuse3.FUSEError) as failure:
            await operations.getxattr(weights, XATTR + b"nothing", None)
        values["missing"] = failure.value.errno
        return values

    values = run(tmp_path, artifact, body)
    assert values["layer"] == model_layer["digest"]
    assert values["media_type"] == model_layer["mediaType"]
    assert values["entry"] == "model model/weights.bin"
    assert values["cached"] == f"{len(WEIGHTS)} of {len(WEIGHTS)}"
    assert json.loads(values["stats"]) == {"requests": 7}
    assert values["kitfile"] == b"the Kitfile (the kit's config)"
    assert values["missing"] == pyfuse3.ENOATTR


def test_statfs_counts_the_kit(tmp_path: Path, artifact: Artifact) -> None:
    async def body(operations: KitOperations, memory: MemoryKit) -> tuple[int, int, int]:
        await operations.opendir(ROOT_INODE, None)
        data = await operations.statfs(None)
        return data.f_blocks * data.f_bsize, data.f_files, memory.kit.tree.total_size

    capacity, files, total = run(tmp_path, artifact, body)
    assert total <= capacity < total + 4096
    assert files == 5  # the root, Kitfile, README.md, model and model/weights.bin


def test_any_failure_of_a_handler_is_eio_logged_once_with_its_kit(
    tmp_path: Path,
    artifact: Artifact,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pyfuse3 ends the session on any exception but FUSEError: each handler turns it into
    EIO for its request alone."""

    async def broken(*args: Any) -> int:
        raise OSError(errno.EIO, "Input/output error")

    async def body(operations: KitOperations, memory: MemoryKit) -> int:
        operations.name = "reg.test/team/kit:v1"
        weights = await path_inode(operations, "model/weights.bin")
        monkeypatch.setattr(Blob, "cached_bytes", broken)  # the cache's files cannot be read
        with pytest.raises(pyfuse3.FUSEError) as failure:
            await operations.getxattr(weights, XATTR + b"layer_cached", None)
        await operations.getxattr(weights, XATTR + b"layer", None)  # the next request answers
        return failure.value.errno

    assert run(tmp_path, artifact, body) == errno.EIO
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert failed[0].getMessage() == "reg.test/team/kit:v1: getxattr failed unexpectedly"
