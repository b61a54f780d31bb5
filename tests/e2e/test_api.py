"""The Python API and the ``modelkit://`` fsspec protocol, as training code uses them: a mount
on a temporary folder, files read with no FUSE at all, pandas and pyarrow reading lazily, all
through the one shared cache."""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path

import datasets
import fsspec
import numpy as np
import pandas
import pyarrow
import pyarrow.parquet
import pytest

import modelkitfs
from modelkitfs.errors import ModelKitFSError
from tests.conftest import MiB, Mounts, write
from tests.support.kitbuilder import build_modelkit
from tests.support.registry_proxy import CountingProxy

KITFILE = {
    "manifestVersion": "1.0.0",
    "package": {"name": "api"},
    "model": {"path": "model/weights.bin"},
    "datasets": [{"name": "train", "path": "data"}],
}


@pytest.fixture(scope="module")
def kit(
    tmp_path_factory: pytest.TempPathFactory, publish, proxy: CountingProxy
) -> tuple[str, Path]:
    """(reference through the counting proxy, the source folder)."""
    source = tmp_path_factory.mktemp("api")
    write(source / "model/weights.bin", np.random.default_rng(5).bytes(24 * MiB + 11))
    frame = pandas.DataFrame({"x": np.arange(50_000), "y": np.arange(50_000) * 0.5})
    (source / "data").mkdir()
    frame.to_csv(source / "data/train.csv", index=False)
    pyarrow.parquet.write_table(pyarrow.Table.from_pandas(frame), source / "data/train.parquet")
    return f"{proxy.address}/{publish(build_modelkit(source, KITFILE), 'api/kit')}", source


def options(tmp_path: Path) -> dict[str, object]:
    return {"plain_http": True, "cache_dir": str(tmp_path / "cache")}


def test_mount_as_a_context_manager(kit: tuple[str, Path], tmp_path: Path) -> None:
    reference, source = kit
    with modelkitfs.mount(reference, **options(tmp_path)) as root:
        assert isinstance(root, Path) and os.path.ismount(root)
        assert (root / "data/train.csv").read_bytes() == (source / "data/train.csv").read_bytes()
    assert not os.path.ismount(root) and not root.exists()  # the temporary folder is gone

    with pytest.raises(RuntimeError), modelkitfs.mount(reference, **options(tmp_path)) as root:
        held = open(root / "model/weights.bin", "rb")  # noqa: SIM115 - busy on purpose
        raise RuntimeError("the training job failed")
    held.close()
    assert not os.path.ismount(root)


def test_open_reads_lazily_without_fuse(
    kit: tuple[str, Path], tmp_path: Path, proxy: CountingProxy, mounts: Mounts
) -> None:
    reference, source = kit
    weights = (source / "model/weights.bin").read_bytes()
    proxy.reset()
    with modelkitfs.open(reference, "model/weights.bin", **options(tmp_path)) as f:
        # No FUSE: no mount of this kit (other tests on the machine may mount theirs).
        assert f"modelkitfs:{reference} " not in Path("/proc/mounts").read_text()
        assert f.seekable() and f.name == "model/weights.bin"
        f.seek(10 * MiB)
        assert f.read(100) == weights[10 * MiB : 10 * MiB + 100]
        assert f.tell() == 10 * MiB + 100
        f.seek(-5, io.SEEK_END)
        assert f.read() == weights[-5:]
    assert proxy.blob_bytes < 12 * MiB  # a few blocks, not the 24 MiB file
    # The same cache serves a mount: what open() fetched is not fetched again.
    with modelkitfs.open(reference, "model/weights.bin", **options(tmp_path)) as f:
        assert f.read() == weights
    proxy.reset()
    mountpoint = mounts.mount(reference.split("/", 1)[1], cache_dir=tmp_path / "cache")
    assert (mountpoint / "model/weights.bin").read_bytes() == weights
    assert proxy.blob_bytes == 0


def test_reader_lists_and_refuses_clearly(kit: tuple[str, Path], tmp_path: Path) -> None:
    reference, source = kit
    with modelkitfs.KitReader(reference, **options(tmp_path)) as reader:
        assert [e.path for e in reader.listdir()] == ["Kitfile", "data", "model"]
        assert [e.path for e in reader.listdir("data")] == ["data/train.csv", "data/train.parquet"]
        info = reader.info("data/train.csv")
        assert not info.is_dir and info.size == (source / "data/train.csv").stat().st_size
        with pytest.raises(FileNotFoundError):
            reader.info("data/missing.csv")
        with pytest.raises(IsADirectoryError):
            reader.open("data")
    with pytest.raises(ModelKitFSError, match="unknown option"):
        modelkitfs.KitReader(reference, plain_htp=True)
    with pytest.raises(ModelKitFSError, match="not found"):
        modelkitfs.open(reference + "-missing", "x", **options(tmp_path))


def test_fsspec_pandas_and_pyarrow_read_lazily(
    kit: tuple[str, Path], tmp_path: Path, proxy: CountingProxy
) -> None:
    reference, source = kit
    url = f"modelkit://{reference}"
    storage = options(tmp_path)
    expected = pandas.read_csv(source / "data/train.csv")
    proxy.reset()
    frame = pandas.read_csv(f"{url}/data/train.csv", storage_options=storage)
    pandas.testing.assert_frame_equal(frame, expected)
    csv_size = (source / "data/train.csv").stat().st_size
    assert proxy.blob_bytes < csv_size + 2 * MiB  # not the 24 MiB model

    fs = fsspec.filesystem("modelkit", **storage)
    table = pyarrow.parquet.read_table(f"{reference}/data/train.parquet", filesystem=fs)
    pandas.testing.assert_frame_equal(table.to_pandas(), expected)

    assert fs.ls(f"{url}/data", detail=False) == [
        f"{reference}/data/train.csv",
        f"{reference}/data/train.parquet",
    ]
    assert fs.info(f"{url}/model")["type"] == "directory"
    with fsspec.open(f"{url}/Kitfile", "rt", **storage) as f:
        assert "name: api" in f.read()
    with pytest.raises(ModelKitFSError, match="names no tag or digest"):
        fs.info("modelkit://127.0.0.1:5000/api/kit/data/train.csv")
    with pytest.raises(PermissionError):
        fs.open(f"{url}/data/new.csv", "wb")


def test_hugging_face_datasets_stream_from_a_kit(kit: tuple[str, Path], tmp_path: Path) -> None:
    reference, _ = kit
    rows = datasets.load_dataset(
        "csv",
        data_files=f"modelkit://{reference}/data/train.csv",
        storage_options=options(tmp_path),
        streaming=True,
        split="train",
    )
    assert list(itertools.islice(rows, 3)) == [
        {"x": 0, "y": 0.0},
        {"x": 1, "y": 0.5},
        {"x": 2, "y": 1.0},
    ]
