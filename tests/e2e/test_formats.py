"""Every ModelKit kit (and other ModelPack tools) can write mounts as ``kit unpack`` writes it:
each compression, layer format and artifact format; legacy kits; indexes; references."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import NESTED_KITFILE, MiB, Mounts, assert_same_tree, write
from tests.support.kitbuilder import (
    Artifact,
    build_index,
    build_modelkit,
    expected_tree,
    selected_tree,
    sha256,
)

# Raw layers hold exactly one regular file: a kit whose entries are all files.
RAW_KITFILE = {
    "manifestVersion": "1.0.0",
    "package": {"name": "raw"},
    "model": {
        "name": "weights",
        "path": "model/weights.safetensors",
        "parts": [{"path": "model/config.json"}],
    },
    "code": [{"path": "src/run.py"}],
    "datasets": [{"name": "train", "path": "data/train.csv"}, {"name": "copy", "path": "copy.csv"}],
    "docs": [{"path": "./README.md"}],
}

TAR_VARIANTS = [
    (artifact, compression)
    for artifact in ("kit", "modelpack", "modelpack-bare")
    for compression in ("", "gzip", "zstd")
] + [("kit-v1.7", ""), ("legacy", "gzip"), ("legacy", "")]
RAW_VARIANTS = [("kit", ""), ("kit", "gzip"), ("kit", "zstd"), ("modelpack", "")]


@pytest.fixture(scope="session")
def raw_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(2)
    write(root / "model/weights.safetensors", rng.bytes(2 * MiB + 5))
    write(root / "model/config.json", b'{"layers": 2}', 0o600)
    write(root / "src/run.py", b"print('run')\n", 0o755)
    write(root / "data/train.csv", b"a,b\n1,2\n")
    write(root / "copy.csv", b"a,b\n1,2\n")  # same bytes, so the same digest, at another path
    write(root / "README.md", b"# raw\n")
    return root


@pytest.mark.parametrize(("artifact", "compression"), TAR_VARIANTS)
def test_tar_layers(
    nested_source: Path, publish, mounts: Mounts, artifact: str, compression: str
) -> None:
    kit = build_modelkit(nested_source, NESTED_KITFILE, compression=compression, artifact=artifact)
    name = f"formats/{artifact}-{compression or 'none'}"
    mountpoint = mounts.mount(publish(kit, name))
    expected = expected_tree(nested_source, NESTED_KITFILE)
    assert_same_tree(mountpoint, nested_source, expected, kitfile=artifact != "modelpack-bare")


@pytest.mark.parametrize(("artifact", "compression"), RAW_VARIANTS)
def test_raw_layers(
    raw_source: Path, publish, mounts: Mounts, artifact: str, compression: str
) -> None:
    kit = build_modelkit(
        raw_source, RAW_KITFILE, compression=compression, layer_format="raw", artifact=artifact
    )
    layers = [layer["digest"] for layer in json.loads(kit.manifest)["layers"]]
    assert len(layers) == 6 and len(set(layers)) == 5  # train.csv and copy.csv share a digest
    mountpoint = mounts.mount(publish(kit, f"raw/{artifact}-{compression or 'none'}"))
    assert_same_tree(mountpoint, raw_source, expected_tree(raw_source, RAW_KITFILE))


def weights_kit(tmp_path: Path, mib: int, **packing: str) -> tuple[bytes, Artifact]:
    """A kit of one ``weights.bin`` of quantised-looking bytes (gzip saves about a third)."""
    rng = np.random.default_rng(mib)
    weights = (rng.standard_normal(mib * MiB) * 4).astype(np.int8).tobytes()
    write(tmp_path / "src/weights.bin", weights)
    kitfile = {"manifestVersion": "1.0.0", "model": {"path": "weights.bin"}}
    return weights, build_modelkit(tmp_path / "src", kitfile, **packing)


def test_gzip_index_is_built_once_then_reads_fetch_only_their_span(
    tmp_path: Path, publish, proxy, mounts: Mounts
) -> None:
    weights, kit = weights_kit(tmp_path, 24, compression="gzip")
    reference = publish(kit, "gzip/span")
    layer_size = kit.layer_bytes

    proxy.reset()
    first = mounts.mount(reference)
    middle = 12 * MiB + 12345
    with open(first / "weights.bin", "rb") as f:
        f.seek(middle)
        assert f.read(64 * 1024) == weights[middle : middle + 64 * 1024]
    building = proxy.blob_bytes
    assert layer_size <= building < layer_size + 2 * MiB  # one pass over the layer, no more

    # Later mounts on the same cache never pay the pass again.
    second = mounts.mount(reference)
    proxy.reset()
    with open(second / "weights.bin", "rb") as f:
        f.seek(3 * MiB)
        assert f.read(MiB) == weights[3 * MiB : 4 * MiB]
    assert proxy.blob_bytes == 0


def test_gzip_index_from_cache_reads_only_the_covering_span(
    tmp_path: Path, publish, proxy, mounts: Mounts
) -> None:
    """With the index cached but the blocks gone, a small read fetches a few MiB, not 24."""
    weights, kit = weights_kit(tmp_path, 24, compression="gzip")
    reference = publish(kit, "gzip/covering")
    first = mounts.mount(reference)
    assert (first / "weights.bin").read_bytes() == weights
    shutil.rmtree(mounts.cache_dir / "blocks")

    second = mounts.mount(reference)
    proxy.reset()
    with open(second / "weights.bin", "rb") as f:
        f.seek(17 * MiB)
        assert f.read(128 * 1024) == weights[17 * MiB : 17 * MiB + 128 * 1024]
    fetched = proxy.blob_bytes
    assert 0 < fetched <= 10 * MiB, fetched


def test_zstd_layer_is_decompressed_once_into_the_shared_cache(
    tmp_path: Path, publish, proxy, mounts: Mounts
) -> None:
    weights, kit = weights_kit(tmp_path, 8, compression="zstd", layer_format="raw")
    reference = publish(kit, "zstd/once")
    proxy.reset()
    first = mounts.mount(reference)
    assert (first / "weights.bin").read_bytes() == weights
    assert proxy.blob_bytes <= kit.layer_bytes + 64 * 1024

    proxy.reset()
    second = mounts.mount(reference)
    assert (second / "weights.bin").read_bytes() == weights
    assert proxy.blob_bytes < 64 * 1024  # the config at most


def test_corrupt_zstd_layer_is_an_error_not_bytes(tmp_path: Path, publish, mounts: Mounts) -> None:
    source = tmp_path / "src"
    write(source / "weights.bin", b"w" * 100_000)
    kitfile = {"manifestVersion": "1.0.0", "model": {"path": "weights.bin"}}
    forged = build_modelkit(source, kitfile, compression="zstd", layer_format="raw")
    config = json.loads(forged.config)
    config["model"]["diffId"] = "sha256:" + "0" * 64  # the bytes will not match it
    forged.replace_config(config)
    mountpoint = mounts.mount(publish(forged, "zstd/forged"))
    with pytest.raises(OSError):
        (mountpoint / "weights.bin").read_bytes()


def test_index_entry_picked_by_label(tmp_path: Path, publish, mounts: Mounts) -> None:
    kits = {}
    for quantization in ("q4_0", "q8_0"):
        source = tmp_path / quantization
        write(source / "model.bin", f"{quantization} weights".encode())
        kits[quantization] = build_modelkit(
            source,
            {"manifestVersion": "1.0.0", "model": {"path": "model.bin"}},
            compression="zstd" if quantization == "q8_0" else "",
        )
        publish(kits[quantization], "index/llm", quantization)
    index = build_index(
        [
            (kits["q4_0"], {"quantization": "q4_0", "format": "gguf"}, "q4_0"),
            (kits["q8_0"], {"quantization": "q8_0", "format": "gguf"}, "q8_0"),
        ]
    )
    reference = publish(index, "index/llm", "all")
    q8 = mounts.mount(reference, labels=["quantization=q8_0"])
    assert (q8 / "model.bin").read_bytes() == b"q8_0 weights"
    both = mounts.mount(reference, labels=["format=gguf", "quantization=q4_0"])
    assert (both / "model.bin").read_bytes() == b"q4_0 weights"

    for labels, message in [
        ([], "2 ModelKits in the index"),
        (["format=gguf"], "2 ModelKits in the index"),
        (["quantization=q2_k"], "no ModelKit in the index"),
    ]:
        error = _mount_error(mounts, reference, labels=labels)
        assert message in error and "quantization=q4_0" in error and "index/llm:q8_0" in error


def _mount_error(mounts: Mounts, reference: str, **kwargs) -> str:
    from modelkitfs import ModelKitFSError

    with pytest.raises(ModelKitFSError) as caught:
        mounts.mount(reference, name=f"failing{len(list(mounts.base.iterdir()))}", **kwargs)
    return str(caught.value)


def test_model_path_naming_another_modelkit(tmp_path: Path, publish, proxy, mounts: Mounts) -> None:
    base_source = tmp_path / "base"
    write(base_source / "weights/base.bin", b"base weights")
    write(base_source / "adapter.bin", b"adapter")
    write(base_source / "train.csv", b"not unpacked from a referenced kit")
    base = build_modelkit(
        base_source,
        {
            "manifestVersion": "1.0.0",
            "model": {"path": "weights", "parts": [{"path": "adapter.bin"}]},
            "datasets": [{"path": "train.csv"}],
        },
    )
    publish(base, "refs/base", "v1")
    tuned_source = tmp_path / "tuned"
    write(tuned_source / "lora.bin", b"lora")
    write(tuned_source / "eval.csv", b"eval")
    tuned_kitfile = {
        "manifestVersion": "1.0.0",
        "model": {"path": f"{proxy.address}/refs/base:v1", "parts": [{"path": "lora.bin"}]},
        "datasets": [{"path": "eval.csv"}],
    }
    publish(build_modelkit(tuned_source, tuned_kitfile), "refs/tuned", "v1")
    mountpoint = mounts.mount("refs/tuned:v1")
    names = sorted(p.relative_to(mountpoint).as_posix() for p in mountpoint.rglob("*"))
    assert names == [
        "Kitfile",
        "adapter.bin",
        "eval.csv",
        "lora.bin",
        "weights",
        "weights/base.bin",
    ]
    assert (mountpoint / "weights/base.bin").read_bytes() == b"base weights"
    assert f"path: {proxy.address}/refs/base:v1" in (mountpoint / "Kitfile").read_text()
    # A datasets filter leaves the referenced kit out entirely.
    only_data = mounts.mount("refs/tuned:v1", filters=["datasets"])
    assert sorted(p.name for p in only_data.iterdir()) == ["eval.csv"]


def test_model_reference_cycles_and_chains_are_bounded(
    tmp_path: Path, publish, proxy, mounts: Mounts
) -> None:
    source = tmp_path / "src"
    write(source / "w.bin", b"w")

    def kit_naming(target: str):
        kitfile = {
            "manifestVersion": "1.0.0",
            "model": {"path": f"{proxy.address}/{target}"},
            "code": [{"path": "w.bin"}],
        }
        return build_modelkit(source, kitfile)

    publish(kit_naming("cycle/b:v1"), "cycle/a", "v1")
    publish(kit_naming("cycle/a:v1"), "cycle/b", "v1")
    error = _mount_error(mounts, "cycle/a:v1")
    assert "found cycle in modelkit references" in error and "cycle/b:v1" in error

    publish(
        build_modelkit(source, {"manifestVersion": "1.0.0", "model": {"path": "w.bin"}}),
        "chain/k0",
        "v1",
    )
    for depth in range(1, 12):
        publish(kit_naming(f"chain/k{depth - 1}:v1"), f"chain/k{depth}", "v1")
    ten_deep = mounts.mount("chain/k10:v1")
    assert (ten_deep / "w.bin").read_bytes() == b"w"
    assert "reached maximum number of model references" in _mount_error(mounts, "chain/k11:v1")


def test_cli_rejects_bad_filters_and_labels(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cases = [
        (["-f", "model:a:b"], "should be in format <type1>,<type2>[:<filter1>,<filter2>]"),
        (["-f", "weights"], "'weights' is not a type; types are kitfile, model,"),
        (["--label", "quantization"], "invalid label 'quantization': expected key=value"),
    ]
    for arguments, message in cases:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "modelkitfs.cli",
                "mount",
                *arguments,
                "a.b/c:d",
                str(mountpoint),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("filters", "selected", "kitfile"),
    [
        (["model"], ["main-dir", "./parts/adapter.bin"], False),
        (
            ["model,datasets"],
            ["main-dir", "./parts/adapter.bin", "main-dir/subdir", "données/"],
            False,
        ),
        (["datasets:train"], ["main-dir/subdir"], False),
        (["docs:./docs/guide.md", "kitfile"], ["./docs/guide.md"], True),
        (["docs:docs/guide.md"], [], False),
        (["model", "datasets:fr"], ["main-dir", "./parts/adapter.bin", "données/"], False),
    ],
)
def test_filters_show_and_fetch_only_what_they_select(
    nested_source: Path,
    publish,
    proxy,
    mounts: Mounts,
    filters: list[str],
    selected: list[str],
    kitfile: bool,
) -> None:
    kit = build_modelkit(nested_source, NESTED_KITFILE)
    reference = publish(kit, "filters/nested")
    proxy.reset()
    mountpoint = mounts.mount(reference, filters=filters)
    expected = selected_tree(nested_source, NESTED_KITFILE, selected)
    assert_same_tree(mountpoint, nested_source, expected, kitfile=kitfile)
    config = json.loads(kit.config)
    wanted = {
        e["digest"]
        for e in [config["model"], *config["model"]["parts"], *config["datasets"], *config["docs"]]
        if e["path"] in selected
    }
    assert proxy.blobs_fetched - {sha256(kit.config)} == wanted


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_corrupt_compressed_layer_is_an_io_error_with_a_reason(
    tmp_path: Path, publish, mounts: Mounts, compression: str
) -> None:
    source = tmp_path / "src"
    rng = np.random.default_rng(6)
    write(source / "model/weights.bin", rng.bytes(3 * MiB))
    write(source / "README.md", b"readable")
    kitfile = {
        "manifestVersion": "1.0.0",
        "model": {"path": "model"},
        "docs": [{"path": "README.md"}],
    }
    kit = build_modelkit(source, kitfile, compression=compression)
    manifest = json.loads(kit.manifest)
    model = manifest["layers"][0]
    blob = bytearray(kit.blobs.pop(model["digest"]))
    blob[len(blob) // 2 : len(blob) // 2 + 4096] = rng.bytes(4096)
    model["digest"] = sha256(bytes(blob))
    kit.blobs[model["digest"]] = bytes(blob)
    kit.manifest = json.dumps(manifest).encode()
    config = json.loads(kit.config)
    config["model"]["digest"] = model["digest"]
    kit.replace_config(config)

    mountpoint = mounts.mount(publish(kit, f"corrupt/{compression}"))
    for _ in range(2):  # fails again, quickly, rather than hanging or serving garbage
        with pytest.raises(OSError) as caught:
            (mountpoint / "model/weights.bin").read_bytes()
        assert caught.value.errno == errno.EIO
    log = mounts.log
    assert f"layer {model['digest']}" in log and "corrupt" in log and "Traceback" not in log
