"""A kit read in this process without FUSE, from a registry in memory under the real client,
store and cache: what it lists and says of each path however spelt, files that seek and read
lazily (counted at the registry), what the cache holds of a file, refusals that name the path,
and a reader whose thread ends with it, whatever ends it."""

from __future__ import annotations

import errno
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from modelkitfs.errors import ModelKitFSError, NotFound
from modelkitfs.options import MountOptions
from modelkitfs.reader import Cached, EntryInfo, KitReader, open_file
from modelkitfs.registry.testing import MemoryRegistry
from tests.support.kitbuilder import build_modelkit
from tests.support.waiting import wait_for
from tests.unit.memory_kit import sessions_reach

MiB = 1024 * 1024
REPOSITORY = "team/kit"
PLAIN = f"reg.test/{REPOSITORY}:v1"
GZIP = f"reg.test/{REPOSITORY}:gz"
FILES = {
    "model/weights.bin": np.random.default_rng(9).bytes(3 * MiB + 5),
    "data/train.csv": b"a,b\n1,2\n" * 100,
    "src/run.py": b"print('train')\n",
}
KITFILE = {
    "manifestVersion": "1.0.0",
    "model": {"path": "model"},
    "datasets": [{"path": "data/train.csv"}],
    "code": [{"path": "src"}],
}
WEIGHTS = FILES["model/weights.bin"]


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MemoryRegistry:
    """The kit at ``v1`` (uncompressed) and ``gz`` (gzip) in a registry in memory, which
    every session of the test reaches as ``reg.test``."""
    source = tmp_path / "src"
    for name, data in FILES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    os.chmod(source / "src/run.py", 0o755)
    os.chmod(source / "data/train.csv", 0o640)
    memory = MemoryRegistry()
    for tag, compression in (("v1", ""), ("gz", "gzip")):
        kit = build_modelkit(source, KITFILE, compression=compression)
        memory.push(REPOSITORY, tag, kit.manifest, kit.media_type, kit.blobs)
    sessions_reach(memory, monkeypatch)
    return memory


@pytest.fixture
def options(tmp_path: Path) -> MountOptions:
    return MountOptions(cache_dir=str(tmp_path / "cache"))


def range_bytes(registry: MemoryRegistry) -> int:
    return sum(r.end - r.start for r in registry.ranges.served)


def fetched_documents(registry: MemoryRegistry) -> list[bytes]:
    """The blobs the registry served whole (configs)."""
    return [registry.ranges.blobs[p] for p in registry.documents if p in registry.ranges.blobs]


def readers() -> int:
    return sum(t.name == "modelkitfs-reader" and t.is_alive() for t in threading.enumerate())


def test_a_reader_lists_and_says_what_stat_would(
    registry: MemoryRegistry, options: MountOptions
) -> None:
    with KitReader(PLAIN, options) as reader:
        with reader.open("Kitfile") as f:
            kitfile = f.read()
        assert b"path: data/train.csv" in kitfile
        assert reader.listdir() == [
            EntryInfo("Kitfile", False, len(kitfile), 0o644),
            EntryInfo("data", True, 0, 0o755),
            EntryInfo("model", True, 0, 0o755),
            EntryInfo("src", True, 0, 0o755),
        ]
        assert reader.listdir("src") == [EntryInfo("src/run.py", False, 15, 0o755)]
        assert reader.info("data/train.csv") == EntryInfo("data/train.csv", False, 800, 0o640)
        assert reader.info("") == EntryInfo("", True, 0, 0o755)


@pytest.mark.parametrize(
    "spelling",
    ["model/weights.bin", "/model/weights.bin", "model//weights.bin", "data/../model/weights.bin",
     "../../model/weights.bin", "./model/./weights.bin/"],
)  # fmt: skip
def test_a_path_is_the_kit_s_however_spelt_and_never_leaves_it(
    registry: MemoryRegistry, options: MountOptions, spelling: str
) -> None:
    with KitReader(PLAIN, options) as reader:
        assert reader.info(spelling) == EntryInfo("model/weights.bin", False, len(WEIGHTS), 0o644)


def test_what_is_not_there_is_refused_as_the_os_would(
    registry: MemoryRegistry, options: MountOptions
) -> None:
    with KitReader(PLAIN, options) as reader:
        for missing in ("model/missing.bin", "data/train.csv/under-a-file", "nothing"):
            with pytest.raises(FileNotFoundError) as refused:
                reader.info(missing)
            assert str(refused.value) == f"{PLAIN} has no {missing!r}"
        with pytest.raises(NotADirectoryError, match=f"'data/train.csv' of {PLAIN} is a file"):
            reader.listdir("data/train.csv")
        with pytest.raises(IsADirectoryError, match=f"'model' of {PLAIN} is a directory"):
            reader.open("model")


def test_a_file_seeks_and_reads_only_what_is_asked(
    registry: MemoryRegistry, options: MountOptions
) -> None:
    with KitReader(PLAIN, options) as reader:
        opened = range_bytes(registry)
        with reader.open("model/weights.bin") as f:
            assert f.seekable() and f.name == "model/weights.bin"
            f.seek(2 * MiB + 3)
            assert f.read(100) == WEIGHTS[2 * MiB + 3 : 2 * MiB + 103]
            assert f.tell() == 2 * MiB + 103
            # Its 1 MiB buffer's blocks, of the layer's four: 1 MiB, or 2 where it spans two.
            assert 0 < range_bytes(registry) - opened <= 2 * MiB
            assert reader.fetched_bytes == sum(len(d) for d in fetched_documents(registry)) + (
                range_bytes(registry)
            )
            assert f.seek(-5, io.SEEK_END) == len(WEIGHTS) - 5
            assert f.read() == WEIGHTS[-5:]
            assert f.read() == b""
            f.seek(10)
            assert f.seek(20, io.SEEK_CUR) == 30
            assert f.read(4) == WEIGHTS[30:34]
        with pytest.raises(OSError, match="negative seek position -1"):
            reader.raw_file("model/weights.bin").seek(-1)
        with reader.open("model/weights.bin") as f:
            assert f.read() == WEIGHTS


def test_the_cache_s_share_of_a_file_and_of_its_layer(
    registry: MemoryRegistry, options: MountOptions
) -> None:
    with KitReader(PLAIN, options) as reader:
        kitfile = reader.info("Kitfile").size
        assert reader.cached("Kitfile") == Cached(kitfile, None, 0, 0)  # no layer's
        assert reader.cached("model") == Cached(0, None, 0, 0)
        before = reader.cached("model/weights.bin")
        assert before.file_bytes == 0 and before.layer_bytes == 0  # its index read no block
        with reader.open("model/weights.bin") as f:
            assert f.read() == WEIGHTS
        wait_for(  # written behind the reader
            lambda: reader.cached("model/weights.bin").file_bytes == len(WEIGHTS),
            "the weights in the cache",
        )
        after = reader.cached("model/weights.bin")
        assert after.layer is not None and after.layer_bytes == after.layer_size
        assert after.layer_size == len(
            registry.ranges.blobs[f"/v2/{REPOSITORY}/blobs/{after.layer}"]
        )


def test_a_compressed_layer_s_files_are_not_cached_one_by_one(
    registry: MemoryRegistry, options: MountOptions
) -> None:
    with KitReader(GZIP, options) as reader:
        with reader.open("data/train.csv") as f:
            assert f.read() == FILES["data/train.csv"]
        cached = reader.cached("data/train.csv")
        assert cached.file_bytes is None and cached.layer is not None


def test_a_read_that_fails_is_an_eio_naming_the_file(
    registry: MemoryRegistry, options: MountOptions
) -> None:
    with KitReader(PLAIN, options) as reader:
        f = reader.raw_file("model/weights.bin")
        layer = reader.cached("model/weights.bin").layer
        del registry.ranges.blobs[f"/v2/{REPOSITORY}/blobs/{layer}"]  # gone from the registry
        with pytest.raises(OSError) as failed:
            f.read(10)
        assert failed.value.errno == errno.EIO
        assert str(failed.value).startswith(
            f"[Errno 5] reading model/weights.bin failed: blob {layer} of reg.test/{REPOSITORY} "
            "not found (HTTP 404)"
        )


def test_a_closed_reader_refuses_calls_and_its_thread_is_gone(
    registry: MemoryRegistry, options: MountOptions
) -> None:
    before = readers()
    reader = KitReader(PLAIN, options)
    assert readers() == before + 1
    reader.close()
    assert readers() == before
    with pytest.raises(ModelKitFSError, match=rf"^{PLAIN} is closed$"):
        reader.info("model")
    reader.close()  # twice is harmless


def test_a_kit_that_cannot_be_opened_raises_from_the_constructor_and_leaves_no_thread(
    registry: MemoryRegistry, options: MountOptions
) -> None:
    before = readers()
    with pytest.raises(NotFound):
        KitReader(f"reg.test/{REPOSITORY}:missing", options)
    assert readers() == before


def test_a_file_opened_alone_closes_its_reader_with_it(
    registry: MemoryRegistry, options: MountOptions
) -> None:
    before = readers()
    with open_file(PLAIN, "src/run.py", options) as f:
        assert readers() == before + 1
        assert f.read() == FILES["src/run.py"]
    assert readers() == before
    with pytest.raises(IsADirectoryError):
        open_file(PLAIN, "src", options)  # nothing to hand back: the reader is closed
    assert readers() == before


def test_options_are_merged_with_overrides(registry: MemoryRegistry, tmp_path: Path) -> None:
    with KitReader(PLAIN, cache_dir=str(tmp_path / "other")) as reader:
        assert reader.options.cache_dir == str(tmp_path / "other")
        assert reader.info("src/run.py").size == 15
    assert (tmp_path / "other").is_dir()  # the cache the override named
