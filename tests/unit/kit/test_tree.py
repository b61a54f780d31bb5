"""The merged tree over a kit in a registry in memory: what it lists and serves is the unpacked
folder's, layers are indexed only when a directory they may fill is looked at, once however
many readers ask, and an indexing failure is reported and retried, not kept."""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from safetensors.numpy import save_file

from modelkitfs.archive import LayerIndex
from modelkitfs.errors import NotFound
from modelkitfs.kit import ROOT_INODE, KitTree, Node
from modelkitfs.kit import tensors as tensor_layouts
from tests.support.kitbuilder import Artifact, build_modelkit
from tests.unit.memory_kit import memory_kit

KITFILE = {
    "manifestVersion": "1.0.0",
    "package": {"name": "tree"},
    "model": {"name": "m", "path": "model"},
    "datasets": [{"name": "train", "path": "data/train.csv"}],
    "code": [{"path": "src"}],
}


def source(root: Path) -> Path:
    files = {
        "model/weights.bin": np.random.default_rng(1).bytes(300_000),
        "model/config.json": b'{"layers": 2}',
        "data/train.csv": b"a,b\n1,2\n" * 1000,
        "src/train.py": b"print('train')\n",
        "src/lib/util.py": b"X = 1\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def context(tmp_path: Path) -> Path:
    return source(tmp_path / "context")


@pytest.fixture
def artifact(context: Path) -> Artifact:
    return build_modelkit(context, KITFILE)


def layer_digest(artifact: Artifact, kind: str) -> str:
    layers = json.loads(artifact.manifest)["layers"]
    return next(d["digest"] for d in layers if f".{kind}." in d["mediaType"])


async def walk(tree: KitTree, node: Node) -> dict[str, bytes | None]:
    """Every path under ``node``: file contents, None for directories."""
    found: dict[str, bytes | None] = {}
    listed = await tree.listing(node.inode)
    assert listed is not None
    for inode in listed.children.values():
        child = tree.node(inode)
        assert child is not None
        if child.is_dir:
            found[child.path] = None
            found.update(await walk(tree, child))
        else:
            found[child.path] = await tree.read(child, 0, child.size + 1)
    return found


def test_the_tree_is_the_unpacked_folder(tmp_path: Path, context: Path, artifact: Artifact) -> None:
    async def main() -> dict[str, bytes | None]:
        async with memory_kit(tmp_path / "cache", artifact) as memory:
            root = memory.kit.tree.node(ROOT_INODE)
            assert root is not None
            return await walk(memory.kit.tree, root)

    found = trio.run(main)
    expected: dict[str, bytes | None] = {
        p.relative_to(context).as_posix(): None if p.is_dir() else p.read_bytes()
        for p in context.rglob("*")
    }
    assert found.pop("Kitfile") is not None
    assert found == expected


def test_looking_up_a_path_indexes_only_the_layers_that_may_hold_it(
    tmp_path: Path, artifact: Artifact
) -> None:
    model, dataset, code = (layer_digest(artifact, k) for k in ("model", "dataset", "code"))

    async def main() -> list[int]:
        async with memory_kit(tmp_path / "cache", artifact) as memory:
            tree = memory.kit.tree
            src = await tree.lookup(ROOT_INODE, "src")
            assert src is not None and src.is_dir
            counts = [memory.requests_for(d) for d in (model, dataset, code)]
            assert await tree.lookup(src.inode, "missing.py") is None
            return counts

    model_requests, dataset_requests, code_requests = trio.run(main)
    assert model_requests == dataset_requests == 0 and code_requests > 0


def test_a_lookup_is_answered_at_once_only_when_the_layers_that_may_hold_it_are_indexed(
    tmp_path: Path, artifact: Artifact
) -> None:
    async def main() -> None:
        async with memory_kit(tmp_path / "cache", artifact) as memory:
            tree = memory.kit.tree
            assert tree.lookup_now(ROOT_INODE, "src") == (False, None)  # the code layer: not yet
            src = await tree.lookup(ROOT_INODE, "src")
            assert src is not None
            assert tree.lookup_now(ROOT_INODE, "src") == (True, src)
            assert tree.lookup_now(src.inode, "train.py") == (
                True,
                await tree.lookup(src.inode, "train.py"),
            )
            assert tree.lookup_now(src.inode, "missing.py") == (True, None)
            assert tree.lookup_now(ROOT_INODE, "model") == (False, None)  # its layer: not yet
            train = tree.lookup_now(src.inode, "train.py")[1]
            assert train is not None and tree.lookup_now(train.inode, "x") == (True, None)

    trio.run(main)


def test_readers_listing_at_once_index_each_layer_once(tmp_path: Path, artifact: Artifact) -> None:
    async def main() -> list[int]:
        async with memory_kit(tmp_path / "cache", artifact) as memory:
            tree = memory.kit.tree
            built = [0] * len(tree.layers)
            for i, layer in enumerate(tree.layers):
                layer.archive.index = counted(layer.archive.index, built, i)  # type: ignore[method-assign]
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(tree.listing, ROOT_INODE)
            return built

    assert trio.run(main) == [1, 1, 1]


def counted(index: Callable[[], Awaitable[LayerIndex]], built: list[int], i: int):
    async def count() -> LayerIndex:
        built[i] += 1
        return await index()

    return count


def test_an_indexing_failure_is_raised_then_retried(tmp_path: Path, artifact: Artifact) -> None:
    code = layer_digest(artifact, "code")

    async def main() -> list[str]:
        async with memory_kit(tmp_path / "cache", artifact) as memory:
            blobs = memory.registry.ranges.blobs
            path = next(p for p in blobs if p.endswith(code))
            data = blobs.pop(path)
            with pytest.raises(NotFound):
                await memory.kit.tree.lookup(ROOT_INODE, "src")
            blobs[path] = data
            src = await memory.kit.tree.lookup(ROOT_INODE, "src")
            assert src is not None
            listing = await memory.kit.tree.listing(src.inode)
            assert listing is not None
            return sorted(listing.children)

    assert trio.run(main) == ["lib", "train.py"]


def test_reads_of_a_safetensors_file_at_once_are_its_bytes(tmp_path: Path) -> None:
    """Readers entering tensors at once, each learning where the tensors lie, get their
    bytes."""
    context = tmp_path / "context"
    (context / "model").mkdir(parents=True)
    rng = np.random.default_rng(3)
    weights = {f"w{i}": rng.random((1024, 1024), dtype=np.float32) for i in range(5)}
    save_file(weights, context / "model/model.safetensors")
    data = (context / "model/model.safetensors").read_bytes()
    assert len(data) >= tensor_layouts.MIN_FILE
    kitfile = {"manifestVersion": "1.0.0", "model": {"path": "model"}}
    offsets = [len(data) // 2, len(data) // 3, 5 * 1024 * 1024, len(data) - 4096]

    async def main() -> dict[int, bytes]:
        got: dict[int, bytes] = {}
        async with memory_kit(tmp_path / "cache", build_modelkit(context, kitfile)) as memory:
            tree = memory.kit.tree
            directory = await tree.lookup(ROOT_INODE, "model")
            assert directory is not None
            node = await tree.lookup(directory.inode, "model.safetensors")
            assert node is not None

            async def read(offset: int) -> None:
                got[offset] = await tree.read(node, offset, 128 * 1024)

            async with trio.open_nursery() as nursery:
                for offset in offsets:
                    nursery.start_soon(read, offset)
        return got

    got = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert got == {offset: data[offset : offset + 128 * 1024] for offset in offsets}


NESTED = {
    "manifestVersion": "1.0.0",
    "model": {"name": "m", "path": "model"},
    "datasets": [{"name": "train", "path": "model/data"}],  # inside the model's folder
    "code": [{"path": "src"}],
    "docs": [{"path": "README.md"}],
}


async def shape(tree: KitTree, node: Node) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path under ``node``: its mode, size and contents (None for directories)."""
    found = {}
    for path, data in (await walk(tree, node)).items():
        inode = await lookup_path(tree, path)
        assert inode is not None
        found[path] = (inode.mode, inode.size, data)
    return found


async def lookup_path(tree: KitTree, path: str) -> Node | None:
    node = tree.node(ROOT_INODE)
    for name in path.split("/"):
        assert node is not None
        node = await tree.lookup(node.inode, name)
    return node


@pytest.mark.parametrize("order", list(itertools.permutations(["model", "src", "README.md"])))
def test_layers_indexed_in_any_order_make_the_same_tree(
    tmp_path: Path, context: Path, order: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looked at one entry after another, layers join the tree one at a time, laid over it
    when they come later in extraction order than those in it (else it is rebuilt): the tree
    is the same as one listed at once."""
    (context / "model/data").mkdir()
    (context / "model/data/rows.csv").write_bytes(b"x\n" * 100)
    (context / "README.md").write_bytes(b"# read me\n")
    artifact = build_modelkit(context, NESTED)
    rebuilds = []
    rebuild = KitTree._rebuild
    monkeypatch.setattr(KitTree, "_rebuild", lambda self: rebuilds.append(1) or rebuild(self))

    async def main() -> tuple[dict, dict, list[str]]:
        async with memory_kit(tmp_path / "one-by-one", artifact) as memory:
            tree = memory.kit.tree
            paths = [layer.path for layer in tree.layers]
            for name in order:
                assert await tree.lookup(ROOT_INODE, name) is not None
            root = tree.node(ROOT_INODE)
            assert root is not None
            one_by_one = await shape(tree, root)
        async with memory_kit(tmp_path / "at-once", artifact) as memory:
            root = memory.kit.tree.node(ROOT_INODE)
            assert root is not None
            at_once = await shape(memory.kit.tree, root)
        return one_by_one, at_once, paths

    rebuilds.clear()
    one_by_one, at_once, paths = trio.run(main)
    assert one_by_one == at_once
    assert "model/data/rows.csv" in one_by_one and "src/lib/util.py" in one_by_one
    # The model's lookup indexes its layer and the one inside it; a layer that comes before
    # one already in the tree makes it rebuilt.
    firsts = {name: paths.index(name) for name in order}
    out_of_order = sum(
        1
        for k, name in enumerate(order)
        if any(firsts[name] < firsts[earlier] for earlier in order[:k])
    )
    assert len(rebuilds) == 2 + out_of_order  # one per tree made at construction


def test_the_block_around_a_read_is_that_of_the_cache_clipped_to_the_file(
    tmp_path: Path, artifact: Artifact, context: Path
) -> None:
    """What a push reads: the file's part of the cache block holding the byte read, its own
    bytes, held (no request; a small layer is held whole once indexed); none for the Kitfile."""
    weights = (context / "model/weights.bin").read_bytes()

    async def main() -> None:
        async with memory_kit(tmp_path / "cache", artifact) as memory:
            tree = memory.kit.tree
            inode = await tree.lookup(ROOT_INODE, "model")
            node = await tree.lookup(inode.inode, "weights.bin") if inode else None
            assert node is not None and node.layer is not None
            size, block = node.size, memory.store.block_size
            first = tree.block_around(node, 10)
            assert first == (0, block - node.offset % block)  # from the file's start
            at = first[1] + 2 * block + 5
            assert tree.block_around(node, at) == (first[1] + 2 * block, first[1] + 3 * block)
            last = tree.block_around(node, size - 1)
            assert last is not None and last[1] == size  # stops at the file's end
            assert tree.block_around(node, size) is None
            assert await tree.read(node, 10, 100) == weights[10:110]
            requests = memory.requests_for(node.layer.archive.digest)
            assert await tree.read_held(node, first[0], first[1]) == weights[: first[1]]
            assert await tree.read_held(node, last[0], size) == weights[last[0] :]
            assert memory.requests_for(node.layer.archive.digest) == requests
            kitfile = await tree.lookup(ROOT_INODE, "Kitfile")
            assert kitfile is not None and tree.block_around(kitfile, 0) is None

    trio.run(main)
