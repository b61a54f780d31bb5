"""End to end: real registry, real FUSE mounts, bytes counted at the server."""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from tests.conftest import NESTED_KITFILE, Mounts, assert_same_tree, write
from tests.support.kitbuilder import build_modelkit, expected_tree, sha256
from tests.support.waiting import wait_for

MiB = 1024 * 1024

NESTED_KITFILE_YAML = """\
manifestVersion: 1.0.0
package:
  name: nested
  version: 1.0.0
  authors: [Ada]
model:
  name: llm
  path: main-dir
  parts:
    - name: adapter
      path: ./parts/adapter.bin
code:
  - path: .
datasets:
  - name: train
    path: main-dir/subdir
  - name: fr
    path: données/
docs:
  - path: ./docs/guide.md
prompts:
  - name: system
    path: prompts/system.txt
"""


@pytest.mark.parametrize("style", ["go", "gnu", "pax"])
def test_tree_is_what_kit_unpack_writes(
    nested_source: Path, publish, mounts: Mounts, style: str
) -> None:
    artifact = build_modelkit(nested_source, NESTED_KITFILE, style=style)
    mountpoint = mounts.mount(publish(artifact, f"nested/{style}"))
    expected = expected_tree(nested_source, NESTED_KITFILE)
    assert "main-dir/subdir/deep/er/still/file.txt" in expected and "src/Kitfile" in expected
    assert_same_tree(mountpoint, nested_source, expected)
    assert (mountpoint / "Kitfile").read_text() == NESTED_KITFILE_YAML
    assert stat.S_IMODE(os.stat(mountpoint / "Kitfile").st_mode) == 0o644


def test_single_file_and_deep_paths(tmp_path: Path, publish, mounts: Mounts) -> None:
    source = tmp_path / "src"
    write(source / "a/b/c/d/model.gguf", b"gguf" * 1000)
    write(source / "a/b/sibling.txt", b"not in any layer")
    kitfile = {
        "manifestVersion": "1.0.0",
        "package": {"name": "single"},
        "model": {"name": "m", "path": "a/b/c/d/model.gguf"},
    }
    mountpoint = mounts.mount(publish(build_modelkit(source, kitfile), "single/file"))
    assert_same_tree(mountpoint, source, {"a", "a/b", "a/b/c", "a/b/c/d", "a/b/c/d/model.gguf"})


def test_mounting_fetches_only_manifest_and_config(
    nested_source: Path, publish, proxy, mounts: Mounts
) -> None:
    artifact = build_modelkit(nested_source, NESTED_KITFILE)
    ref = publish(artifact, "nested/lazy")
    proxy.reset()
    mountpoint = mounts.mount(ref)
    assert proxy.blob_bytes == len(artifact.config)
    assert proxy.manifest_requests == 1
    proxy.reset()
    # Listing main-dir reads the headers of the layers that may hold it, not the 3 MiB weight.
    assert "weights.bin" in os.listdir(mountpoint / "main-dir")
    assert proxy.blob_bytes < 256 * 1024
    proxy.reset()
    assert (mountpoint / "main-dir/config.json").read_bytes() == b'{"a": 1}'
    assert proxy.blob_bytes <= 1 * MiB  # the one block that holds it


def test_read_only(nested_source: Path, publish, mounts: Mounts) -> None:
    mountpoint = mounts.mount(publish(build_modelkit(nested_source, NESTED_KITFILE), "nested/ro"))
    with pytest.raises(OSError) as caught:
        (mountpoint / "README.md").write_text("changed")
    assert caught.value.errno == 30  # EROFS
    with pytest.raises(OSError):
        (mountpoint / "new.txt").write_text("x")
    vfs = os.statvfs(mountpoint)
    assert vfs.f_blocks * vfs.f_frsize >= sum(
        p.stat().st_size for p in nested_source.rglob("*") if p.is_file()
    ) - len(b"ignored by kit\n")


@pytest.fixture(scope="session")
def big_kit(tmp_path_factory: pytest.TempPathFactory, publish) -> tuple[Path, str]:
    source = tmp_path_factory.mktemp("big")
    write(source / "model/weights.bin", np.random.default_rng(2).bytes(256 * MiB))
    write(source / "README.md", b"big\n")
    kitfile = {
        "manifestVersion": "1.0.0",
        "package": {"name": "big"},
        "model": {"name": "big", "path": "model"},
        "docs": [{"path": "README.md"}],
    }
    return source, publish(build_modelkit(source, kitfile), "big/model")


def test_partial_read_of_a_big_file_fetches_little(big_kit, proxy, mounts: Mounts) -> None:
    source, ref = big_kit
    mountpoint = mounts.mount(ref)
    proxy.reset()
    with open(mountpoint / "model/weights.bin", "rb") as f:
        data = os.pread(f.fileno(), MiB, 128 * MiB + 12345)
    with open(source / "model/weights.bin", "rb") as f:
        assert data == os.pread(f.fileno(), MiB, 128 * MiB + 12345)
    assert 1 * MiB <= proxy.blob_bytes < 16 * MiB


def test_listing_small_files_fetches_their_layer_once_for_later_reads(
    tmp_path: Path, publish, proxy, mounts: Mounts
) -> None:
    """Between headers back to back lie the files' bytes: the first listing fetches the layer
    (in parallel, into the cache), and reading the files after it costs no request."""
    rng = np.random.default_rng(1)
    files = {
        f"data/s{i % 10}/f{i:04d}.bin": rng.bytes(int(rng.integers(100, 1500))) for i in range(4000)
    }
    for name, data in files.items():
        write(tmp_path / "src" / name, data)
    kit = build_modelkit(
        tmp_path / "src", {"manifestVersion": "1.0.0", "datasets": [{"path": "data"}]}
    )
    layer_size = json.loads(kit.manifest)["layers"][0]["size"]
    mountpoint = mounts.mount(publish(kit, "test/small-files"))
    proxy.reset()
    listed = {
        (Path(top) / name).relative_to(mountpoint).as_posix()
        for top, _, names in os.walk(mountpoint / "data")
        for name in names
    }
    assert listed == set(files)
    assert proxy.blob_bytes <= layer_size + 2 * 64 * 1024  # first and last windows: not cached
    proxy.reset()
    for name, data in files.items():
        assert (mountpoint / name).read_bytes() == data
    assert proxy.blob_bytes == 0


def test_second_mount_on_the_same_cache_downloads_nothing(big_kit, proxy, mounts: Mounts) -> None:
    source, ref = big_kit
    first = mounts.mount(ref)
    original = (source / "model/weights.bin").read_bytes()
    assert (first / "model/weights.bin").read_bytes() == original
    assert (first / "README.md").read_bytes() == b"big\n"
    proxy.reset()
    second = mounts.mount(ref)
    assert (second / "model/weights.bin").read_bytes() == original
    assert (second / "README.md").read_bytes() == b"big\n"
    assert proxy.blob_bytes == 0
    assert proxy.blob_requests == 0


def test_safetensors_reads_one_tensor_with_about_its_bytes(
    tmp_path: Path, publish, proxy, mounts: Mounts
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(3)
    tensors = {f"layer{i}": rng.standard_normal((1024, 4096), dtype=np.float32) for i in range(6)}
    save_file(tensors, source / "model.safetensors")
    kitfile = {
        "manifestVersion": "1.0.0",
        "package": {"name": "st"},
        "model": {"name": "st", "path": "model.safetensors"},
    }
    mountpoint = mounts.mount(publish(build_modelkit(source, kitfile), "st/model"))
    proxy.reset()
    with safe_open(mountpoint / "model.safetensors", framework="numpy") as f:
        tensor = f.get_tensor("layer3")
    np.testing.assert_array_equal(tensor, tensors["layer3"])
    size = tensors["layer3"].nbytes  # 16 MiB of a 96 MiB file
    assert size <= proxy.blob_bytes <= 1.1 * size + 8 * MiB


def test_a_read_entering_a_tensor_fetches_the_rest_of_it_and_not_the_next(
    tmp_path: Path, publish, proxy, mounts: Mounts
) -> None:
    source = tmp_path / "src"
    rng = np.random.default_rng(4)
    tensors = {f"layer{i}": rng.standard_normal((1024, 4096), dtype=np.float32) for i in range(4)}
    source.mkdir()
    save_file(tensors, source / "model.safetensors")
    kitfile = {"manifestVersion": "1.0.0", "model": {"path": "model.safetensors"}}
    mountpoint = mounts.mount(publish(build_modelkit(source, kitfile), "st/unit"))
    with safe_open(source / "model.safetensors", framework="numpy") as f:
        names = list(f.keys())
    header = 8 + int.from_bytes((source / "model.safetensors").read_bytes()[:8], "little")
    size = tensors["layer2"].nbytes
    start = header + names.index("layer2") * size
    with open(mountpoint / "model.safetensors", "rb", buffering=0) as f:
        assert f.read(8) == (header - 8).to_bytes(8, "little")  # as loaders start
        proxy.reset()
        expected = tensors["layer2"].tobytes()[1000 : 1000 + 4096]
        assert os.pread(f.fileno(), 4096, start + 1000) == expected
    # The rest comes in the background.
    wait_for(lambda: proxy.blob_bytes >= size - MiB, "the rest of the tensor fetched")
    assert proxy.blob_bytes <= size + MiB  # that tensor, not the next


def test_concurrent_readers_share_one_download(big_kit, proxy, mounts: Mounts) -> None:
    source, ref = big_kit
    mountpoint = mounts.mount(ref)
    (mountpoint / "model").exists()  # index first, so only data is counted below
    proxy.reset()
    offset, length = 100 * MiB, 8 * MiB

    def read(_: int) -> bytes:
        with open(mountpoint / "model/weights.bin", "rb", buffering=0) as f:
            return os.pread(f.fileno(), length, offset)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read, range(8)))
    with open(source / "model/weights.bin", "rb") as f:
        expected = os.pread(f.fileno(), length, offset)
    assert all(r == expected for r in results)
    # Eight readers, one download (readahead may run up to 4 MiB past, plus block rounding).
    assert length <= proxy.blob_bytes <= length + 6 * MiB


def test_prefetch_model_fills_the_cache_in_the_background(
    nested_source: Path, publish, proxy, mounts: Mounts
) -> None:
    artifact = build_modelkit(nested_source, NESTED_KITFILE)
    reference = publish(artifact, "prefetch/nested")
    config = json.loads(artifact.config)
    model_layers = {config["model"]["digest"], config["model"]["parts"][0]["digest"]}
    proxy.reset()
    mountpoint = mounts.mount(reference, prefetch="model")
    # Nothing reads: the daemon fetches on its own.
    wait_for(lambda: "prefetch (model) done" in mounts.log, "the prefetch ended")
    assert proxy.blobs_fetched - {sha256(artifact.config)} == model_layers  # the model only
    assert (mountpoint / "main-dir/weights.bin").exists()  # indexes the other layers it needs
    proxy.reset()
    weights = (mountpoint / "main-dir/weights.bin").read_bytes()
    assert weights == (nested_source / "main-dir/weights.bin").read_bytes()
    assert proxy.blob_bytes == 0


def test_provenance_in_extended_attributes(nested_source: Path, publish, mounts: Mounts) -> None:
    artifact = build_modelkit(nested_source, NESTED_KITFILE)
    mountpoint = mounts.mount(publish(artifact, "nested/xattrs"))
    layers = {
        layer["mediaType"].split(".")[3]: layer for layer in json.loads(artifact.manifest)["layers"]
    }
    weights = mountpoint / "main-dir/weights.bin"
    size = weights.stat().st_size

    def attribute(path: Path, name: str) -> str:
        return os.getxattr(path, f"user.modelkitfs.{name}").decode()

    assert sorted(os.listxattr(weights)) == [
        f"user.modelkitfs.{n}" for n in ("cached", "entry", "layer", "layer_cached", "media_type")
    ]
    assert attribute(weights, "layer") == layers["model"]["digest"]
    assert attribute(weights, "media_type") == layers["model"]["mediaType"]
    assert attribute(weights, "entry") == "model main-dir"
    assert attribute(weights, "cached") == f"0 of {size}"
    assert weights.read_bytes() == (nested_source / "main-dir/weights.bin").read_bytes()
    # Blocks reach the disk behind the reader.
    wait_for(lambda: attribute(weights, "cached") == f"{size} of {size}", "the file cached")
    cached, _, total = attribute(weights, "layer_cached").partition(" of ")
    assert int(total) == layers["model"]["size"] and size <= int(cached) <= int(total)
    assert attribute(mountpoint / "main-dir/subdir", "entry") == "dataset main-dir/subdir"
    assert attribute(mountpoint / "Kitfile", "entry") == "the Kitfile (the kit's config)"
    assert "user.modelkitfs.stats" in os.listxattr(mountpoint)
    with pytest.raises(OSError):
        os.getxattr(weights, "user.modelkitfs.nothing")
