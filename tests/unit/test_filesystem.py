"""The ``modelkit://`` fsspec protocol over a registry in memory: where a URL's reference ends
and its path begins, listings and file information as fsspec names them, files opened read-only
(pandas reading one), one reader per kit, closed with the filesystem."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pandas
import pytest

from modelkitfs.errors import InvalidReference, ModelKitFSError
from modelkitfs.filesystem import ModelKitFileSystem, split_url
from modelkitfs.registry.testing import MemoryRegistry
from tests.support.kitbuilder import build_modelkit
from tests.unit.memory_kit import sessions_reach

DIGEST = "sha256:" + "a" * 64
KIT = "reg.test/team/kit:v1"
CSV = b"x,y\n0,0.0\n1,0.5\n2,1.0\n"
WEIGHTS = bytes(range(256)) * 40


@pytest.mark.parametrize(
    ("url", "reference", "path"),
    [
        ("reg.example/team/llm:v1/data/train.csv", "reg.example/team/llm:v1", "data/train.csv"),
        ("modelkit://reg.example/team/llm:v1/data/", "reg.example/team/llm:v1", "data"),
        ("reg.example/team/llm:v1", "reg.example/team/llm:v1", ""),
        ("127.0.0.1:5000/team/llm:v1/a/b.csv", "127.0.0.1:5000/team/llm:v1", "a/b.csv"),
        (f"localhost:5000/llm@{DIGEST}/w.bin", f"localhost:5000/llm@{DIGEST}", "w.bin"),
        (f"reg.example/llm:v1@{DIGEST}/w.bin", f"reg.example/llm:v1@{DIGEST}", "w.bin"),
        ("llm:v1/w.bin", "llm:v1", "w.bin"),  # a first part with a tag is no host:port
        ("reg.example/team/llm:v1/data/a:b.csv", "reg.example/team/llm:v1", "data/a:b.csv"),
    ],
)
def test_a_reference_ends_with_the_part_that_holds_its_tag_or_digest(
    url: str, reference: str, path: str
) -> None:
    assert split_url(url) == (reference, path)


@pytest.mark.parametrize("url", ["127.0.0.1:5000/team/llm/data.csv", "reg.example/team/llm"])
def test_a_url_without_a_tag_or_digest_is_refused_saying_how_to_write_it(url: str) -> None:
    with pytest.raises(InvalidReference) as refused:
        split_url(url)
    assert str(refused.value) == (
        f"modelkit://{url} names no tag or digest: write modelkit://REGISTRY/REPOSITORY:TAG"
        "/PATH (or @sha256:DIGEST), so that the kit's reference ends where the path begins"
    )


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MemoryRegistry:
    source = tmp_path / "src"
    (source / "data").mkdir(parents=True)
    (source / "data/train.csv").write_bytes(CSV)
    (source / "w.bin").write_bytes(WEIGHTS)
    kitfile = {
        "manifestVersion": "1.0.0",
        "model": {"path": "w.bin"},
        "datasets": [{"path": "data"}],
    }
    memory = MemoryRegistry()
    for tag in ("v1", "v2"):
        kit = build_modelkit(source, kitfile)
        memory.push("team/kit", tag, kit.manifest, kit.media_type, kit.blobs)
    sessions_reach(memory, monkeypatch)
    return memory


def readers() -> int:
    return sum(t.name == "modelkitfs-reader" and t.is_alive() for t in threading.enumerate())


@pytest.fixture
def fs(tmp_path: Path, registry: MemoryRegistry) -> Iterator[ModelKitFileSystem]:
    filesystem = ModelKitFileSystem(cache_dir=str(tmp_path / "cache"), skip_instance_cache=True)
    yield filesystem
    filesystem.close()


def test_listings_and_information_as_fsspec_names_them(fs: ModelKitFileSystem) -> None:
    assert fs.ls(f"modelkit://{KIT}", detail=False) == [
        f"{KIT}/Kitfile",
        f"{KIT}/data",
        f"{KIT}/w.bin",
    ]
    assert fs.ls(f"{KIT}/data") == [
        {"name": f"{KIT}/data/train.csv", "size": len(CSV), "type": "file", "mode": 0o644}
    ]
    assert fs.ls(f"{KIT}/w.bin", detail=False) == [f"{KIT}/w.bin"]  # a file lists itself
    assert fs.info(f"modelkit://{KIT}/") == {
        "name": KIT,
        "size": 0,
        "type": "directory",
        "mode": 0o755,
    }
    assert fs.info(f"{KIT}/w.bin")["size"] == len(WEIGHTS)
    assert fs.exists(f"{KIT}/data/train.csv") and not fs.exists(f"{KIT}/data/test.csv")
    with pytest.raises(FileNotFoundError):
        fs.info(f"{KIT}/data/test.csv")


def test_files_open_for_reading_alone(fs: ModelKitFileSystem) -> None:
    with fs.open(f"modelkit://{KIT}/w.bin", "rb") as f:
        f.seek(1000)
        assert f.read(10) == WEIGHTS[1000:1010]
    assert fs.cat_file(f"{KIT}/data/train.csv") == CSV
    with pytest.raises(PermissionError) as refused:
        fs.open(f"{KIT}/data/new.csv", "wb")
    assert str(refused.value) == f"modelkit:// is read-only: open {KIT}/data/new.csv with mode 'rb'"


def test_pandas_reads_a_kit_s_file_through_the_protocol(
    tmp_path: Path, registry: MemoryRegistry
) -> None:
    before = readers()
    storage = {"cache_dir": str(tmp_path / "pandas-cache")}
    frame = pandas.read_csv(f"modelkit://{KIT}/data/train.csv", storage_options=storage)
    assert frame.to_dict("list") == {"x": [0, 1, 2], "y": [0.0, 0.5, 1.0]}
    used = fsspec.filesystem("modelkit", **storage)  # fsspec keeps the instance pandas used
    assert isinstance(used, ModelKitFileSystem) and readers() == before + 1
    used.close()
    assert readers() == before


def test_one_reader_per_kit_closed_with_the_filesystem(fs: ModelKitFileSystem) -> None:
    before = readers()
    fs.ls(f"{KIT}/data")
    fs.cat_file(f"{KIT}/w.bin")
    assert readers() == before + 1  # the same kit: the same reader
    fs.ls("reg.test/team/kit:v2")
    assert readers() == before + 2
    fs.close()
    assert readers() == before


def test_storage_options_are_mount_options_checked_at_once(tmp_path: Path) -> None:
    fs = ModelKitFileSystem(cache_dir=str(tmp_path), timeout=12.5, skip_instance_cache=True)
    assert (fs.options.cache_dir, fs.options.timeout) == (str(tmp_path), 12.5)
    with pytest.raises(ModelKitFSError, match="--timeout must be a positive number of seconds"):
        ModelKitFileSystem(cache_dir=str(tmp_path), timeout=0, skip_instance_cache=True)
