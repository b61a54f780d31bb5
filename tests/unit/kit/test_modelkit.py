"""Opening a ModelKit from a registry in memory: an index entry picked by labels, the kits a
``model.path`` names (their model alone, chains bounded, cycles refused, never a name of this
machine), the config and the Kitfile as kit reads them. What is fetched is counted at the
registry: what a kit does not need is never asked for."""

from __future__ import annotations

import contextlib
import json
import logging
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from modelkitfs.blobs import BlobStore
from modelkitfs.errors import NotAllowed, NotAModelKit, SelectionError
from modelkitfs.kit import ROOT_INODE, KitTree, ModelKit, open_modelkit, parse_filters
from modelkitfs.kit.modelkit import MAX_CONFIG_SIZE, MAX_MODEL_REFERENCES
from modelkitfs.reference import Reference, parse_reference
from modelkitfs.registry.testing import MemoryRegistry
from tests.support.kitbuilder import Artifact, build_index, build_modelkit
from tests.unit.memory_kit import REPOSITORY, registry_store

KIT = f"reg.test/{REPOSITORY}"


def packed(root: Path, files: Mapping[str, bytes], **kitfile: Any) -> Artifact:
    """A kit of ``files`` (written under ``root``) with the Kitfile sections ``kitfile``."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return build_modelkit(root, {"manifestVersion": "1.0.0", **kitfile})


def push(registry: MemoryRegistry, tag: str, artifact: Artifact) -> str:
    return registry.push(REPOSITORY, tag, artifact.manifest, artifact.media_type, artifact.blobs)


def manifest_asked(registry: MemoryRegistry, identifier: str) -> bool:
    return f"/v2/{REPOSITORY}/manifests/{identifier}" in registry.documents


def blob_asked(registry: MemoryRegistry, digest: str) -> bool:
    path = f"/v2/{REPOSITORY}/blobs/{digest}"
    return path in registry.documents or any(s.url.endswith(path) for s in registry.ranges.served)


async def files_of(
    tree: KitTree, modes: dict[str, int], inode: int = ROOT_INODE
) -> dict[str, bytes]:
    """Every file of the tree under ``inode``, with its bytes; ``modes`` gets each one's."""
    found: dict[str, bytes] = {}
    directory = await tree.listing(inode)
    assert directory is not None
    for child_inode in directory.children.values():
        child = tree.node(child_inode)
        assert child is not None
        modes[child.path] = child.mode
        if child.is_dir:
            found.update(await files_of(tree, modes, child.inode))
        else:
            found[child.path] = await tree.read(child, 0, child.size + 1)
    return found


@dataclass
class Opened:
    kit: ModelKit
    files: dict[str, bytes]
    modes: dict[str, int]
    asked: list[str] = field(default_factory=list)  # references whose store was asked for
    checked: list[tuple[str, str]] = field(default_factory=list)  # (reference, digest)


def open_kit(
    cache: Path,
    registry: MemoryRegistry,
    reference: str,
    *,
    filters: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    elsewhere: Mapping[str, MemoryRegistry] | None = None,
) -> Opened:
    """``reference`` opened with stores of ``registry`` (and of the registries ``elsewhere``
    by name), every file of its tree read."""
    asked: list[str] = []
    checked: list[tuple[str, str]] = []

    async def check(ref: Reference, digest: str) -> None:
        checked.append((str(ref), digest))

    async def main() -> Opened:
        async with contextlib.AsyncExitStack() as stack:
            stores = {"": await stack.enter_async_context(registry_store(cache / "a", registry))}
            for name, other in (elsewhere or {}).items():
                stores[name] = await stack.enter_async_context(registry_store(cache / name, other))

            def store_for(ref: Reference) -> BlobStore:
                asked.append(str(ref))
                return stores.get(ref.registry, stores[""])

            kit = await open_modelkit(
                store_for,
                parse_reference(reference),
                filters=parse_filters(filters),
                labels=labels,
                check=check,
            )
            try:
                modes: dict[str, int] = {}
                files = await files_of(kit.tree, modes)
            finally:
                await kit.tree.aclose()
            return Opened(kit, files, modes, asked, checked)

    return trio.run(main)


def refused(cache: Path, registry: MemoryRegistry, reference: str, **options: Any) -> str:
    with pytest.raises((SelectionError, NotAModelKit, NotAllowed)) as raised:
        open_kit(cache, registry, reference, **options)
    return str(raised.value)


# --- ModelKit indexes -------------------------------------------------------------------------


@dataclass
class Index:
    registry: MemoryRegistry
    kits: dict[str, Artifact]
    artifact: Artifact


@pytest.fixture
def index(tmp_path: Path) -> Index:
    """Two kits of one model, quantized two ways, and the index over them at tag ``all``."""
    registry = MemoryRegistry()
    kits = {}
    for quantization in ("q4_0", "q8_0"):
        kits[quantization] = packed(
            tmp_path / quantization,
            {"model.bin": f"{quantization} weights".encode()},
            model={"path": "model.bin"},
        )
        push(registry, quantization, kits[quantization])
    entries: list[tuple[Artifact, dict[str, Any], str | None]] = [
        (kits[q], {"quantization": q, "format": "gguf"}, q) for q in ("q4_0", "q8_0")
    ]
    artifact = build_index(entries)
    push(registry, "all", artifact)
    return Index(registry, kits, artifact)


def test_an_index_entry_is_opened_by_its_labels_the_other_never_fetched(
    tmp_path: Path, index: Index
) -> None:
    registry, kits, index_digest = index.registry, index.kits, index.artifact.digest
    opened = open_kit(tmp_path, registry, f"{KIT}:all", labels={"quantization": "q8_0"})
    assert opened.files["model.bin"] == b"q8_0 weights"
    assert set(opened.files) == {"Kitfile", "model.bin"}
    assert opened.kit.manifest_digest == kits["q8_0"].digest
    assert opened.kit.named_digest == index_digest  # what the reference resolved to
    # The index's digest is checked: it names its entries, so the entry needs no check of its own.
    assert opened.checked == [(f"{KIT}:all", index_digest)]
    assert not manifest_asked(registry, kits["q4_0"].digest)
    q4_config = json.loads(kits["q4_0"].manifest)["config"]["digest"]
    assert not blob_asked(registry, q4_config)


def test_an_index_needs_labels_that_pick_one_entry(tmp_path: Path, index: Index) -> None:
    registry, kits = index.registry, index.kits
    message = refused(tmp_path, registry, f"{KIT}:all")
    assert message.startswith(f"2 ModelKits in the index {KIT}:all match")
    assert not manifest_asked(registry, kits["q4_0"].digest)
    assert not manifest_asked(registry, kits["q8_0"].digest)


def test_labels_for_a_modelkit_are_refused(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    push(registry, "v1", packed(tmp_path / "kit", {"m.bin": b"m"}, model={"path": "m.bin"}))
    assert refused(tmp_path, registry, f"{KIT}:v1", labels={"quantization": "q8_0"}) == (
        f"--label picks a ModelKit out of a ModelKit index, but {KIT}:v1 is a ModelKit: "
        "mount it without --label"
    )


def test_an_index_entry_that_is_an_index_is_refused(tmp_path: Path, index: Index) -> None:
    push(index.registry, "outer", build_index([(index.artifact, {}, None)]))
    assert refused(tmp_path, index.registry, f"{KIT}:outer") == (
        f"{KIT}:outer: index entry {index.artifact.digest} is an index itself"
    )


# --- model.path: another ModelKit -------------------------------------------------------------


@pytest.fixture
def tuned(tmp_path: Path) -> tuple[MemoryRegistry, Artifact, Artifact]:
    """A base kit (model, part and dataset) at ``base``, and at ``tuned`` a kit whose
    model.path names it, with a part and a dataset of its own."""
    registry = MemoryRegistry()
    base = packed(
        tmp_path / "base",
        {"weights/base.bin": b"base weights", "adapter.bin": b"adapter", "train.csv": b"no"},
        model={"path": "weights", "parts": [{"path": "adapter.bin"}]},
        datasets=[{"path": "train.csv"}],
    )
    push(registry, "base", base)
    kit = packed(
        tmp_path / "tuned",
        {"lora.bin": b"lora", "eval.csv": b"eval"},
        model={"path": f"{KIT}:base", "parts": [{"path": "lora.bin"}]},
        datasets=[{"path": "eval.csv"}],
    )
    push(registry, "tuned", kit)
    return registry, base, kit


def layer_of(artifact: Artifact, kind: str) -> str:
    layers = json.loads(artifact.manifest)["layers"]
    return next(d["digest"] for d in layers if f".{kind}." in d["mediaType"])


def test_the_model_a_model_path_names_is_unpacked_with_its_parts_alone(
    tmp_path: Path, tuned: tuple[MemoryRegistry, Artifact, Artifact]
) -> None:
    registry, base, kit = tuned
    opened = open_kit(tmp_path, registry, f"{KIT}:tuned")
    files = dict(opened.files)
    assert f"path: {KIT}:base" in files.pop("Kitfile").decode()  # the kit's own Kitfile
    assert files == {
        "weights/base.bin": b"base weights",
        "adapter.bin": b"adapter",
        "lora.bin": b"lora",
        "eval.csv": b"eval",
    }
    assert opened.asked == [f"{KIT}:tuned", f"{KIT}:base"]
    assert opened.checked == [(f"{KIT}:tuned", kit.digest), (f"{KIT}:base", base.digest)]
    assert not blob_asked(registry, layer_of(base, "dataset"))  # not unpacked, not fetched


def test_a_filter_without_the_model_never_asks_for_the_kit_it_names(
    tmp_path: Path, tuned: tuple[MemoryRegistry, Artifact, Artifact]
) -> None:
    registry, _, _ = tuned
    opened = open_kit(tmp_path, registry, f"{KIT}:tuned", filters=["datasets"])
    assert opened.files == {"eval.csv": b"eval"}
    assert opened.asked == [f"{KIT}:tuned"]
    assert not manifest_asked(registry, "base")


def test_a_model_path_on_another_registry_is_read_from_that_registry(tmp_path: Path) -> None:
    here, there = MemoryRegistry(), MemoryRegistry()
    base = packed(tmp_path / "base", {"w.bin": b"from there"}, model={"path": "w.bin"})
    push(there, "base", base)
    kit = packed(
        tmp_path / "kit",
        {"notes.md": b"here"},
        model={"path": f"other.test/{REPOSITORY}:base"},
        docs=[{"path": "notes.md"}],
    )
    push(here, "v1", kit)
    opened = open_kit(tmp_path, here, f"{KIT}:v1", elsewhere={"other.test": there})
    assert opened.files["w.bin"] == b"from there" and opened.files["notes.md"] == b"here"
    assert opened.checked[1] == (f"other.test/{REPOSITORY}:base", base.digest)
    assert manifest_asked(there, "base") and not manifest_asked(here, "base")


def naming(root: Path, target: str, own: str) -> Artifact:
    """A kit whose model.path names ``target``, with a file ``own`` of its own (code)."""
    return packed(root, {own: own.encode()}, model={"path": target}, code=[{"path": own}])


@pytest.mark.parametrize(
    ("names", "cycle"),
    [
        ({"a": "b", "b": "a"}, ["b", "a", "b"]),
        ({"a": "a"}, ["a", "a"]),
        ({"a": "b", "b": "c", "c": "b"}, ["b", "c", "b"]),
    ],
)
def test_a_cycle_of_model_paths_is_refused_naming_it(
    tmp_path: Path, names: dict[str, str], cycle: list[str]
) -> None:
    registry = MemoryRegistry()
    for tag, target in names.items():
        push(registry, tag, naming(tmp_path / tag, f"{KIT}:{target}", f"{tag}.txt"))
    chain = "=>".join(f"{KIT}:{tag}" for tag in cycle)
    assert refused(tmp_path, registry, f"{KIT}:a") == (
        f"found cycle in modelkit references: [{chain}]"
    )


def test_a_chain_of_model_paths_is_followed_ten_deep_and_no_deeper(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    push(registry, "k0", packed(tmp_path / "k0", {"w.bin": b"w"}, model={"path": "w.bin"}))
    for depth in range(1, MAX_MODEL_REFERENCES + 2):
        push(registry, f"k{depth}", naming(tmp_path / f"k{depth}", f"{KIT}:k{depth - 1}", "c.txt"))

    opened = open_kit(tmp_path, registry, f"{KIT}:k{MAX_MODEL_REFERENCES}")
    assert opened.files.keys() == {"Kitfile", "w.bin", "c.txt"}  # the kits between: model only
    assert len(opened.asked) == MAX_MODEL_REFERENCES + 1

    registry.documents.clear()
    top = MAX_MODEL_REFERENCES + 1
    chain = "=>".join(f"{KIT}:k{depth}" for depth in range(top - 1, -1, -1))
    assert refused(tmp_path, registry, f"{KIT}:k{top}") == (
        f"reached maximum number of model references: [{chain}]"
    )
    assert not manifest_asked(registry, "k0")  # refused before the eleventh is fetched


@pytest.mark.parametrize(
    ("model_path", "where"),
    [
        ("oci-layout:/srv/kits/base:v1", "a folder"),
        ("base:v1", "kit's local storage"),
        ("localhost/team/base:v1", "kit's local storage"),
    ],
)
def test_a_pushed_kit_s_model_path_never_names_this_machine(
    tmp_path: Path, model_path: str, where: str
) -> None:
    registry = MemoryRegistry()
    push(registry, "v1", naming(tmp_path / "kit", model_path, "c.txt"))
    with pytest.raises(NotAllowed) as raised:
        open_kit(tmp_path, registry, f"{KIT}:v1")
    assert str(raised.value) == (
        f"{KIT}:v1: its model.path {model_path!r} names {where} of this machine; a kit's "
        "model.path may name only a registry reference (registry.example/team/model:v1): ask "
        "its publisher to push the referenced kit and name it there"
    )


def test_a_kit_in_local_storage_may_name_another_there_but_never_a_folder(tmp_path: Path) -> None:
    registry = MemoryRegistry()  # plays kit's local storage: the store answers any reference
    push(registry, "base", packed(tmp_path / "base", {"w.bin": b"w"}, model={"path": "w.bin"}))
    push(registry, "v1", naming(tmp_path / "kit", f"{REPOSITORY}:base", "c.txt"))
    opened = open_kit(tmp_path, registry, f"localhost/{REPOSITORY}:v1")
    assert opened.files["w.bin"] == b"w"
    assert opened.asked == [f"localhost/{REPOSITORY}:v1", f"localhost/{REPOSITORY}:base"]

    push(registry, "v2", naming(tmp_path / "layout", "oci-layout:/srv/kits/base:v1", "c.txt"))
    with pytest.raises(NotAllowed, match="names a folder of this machine"):
        open_kit(tmp_path, registry, f"localhost/{REPOSITORY}:v2")


# --- config and Kitfile -----------------------------------------------------------------------


def with_manifest(artifact: Artifact, change: Any) -> Artifact:
    manifest = json.loads(artifact.manifest)
    change(manifest)
    return Artifact(json.dumps(manifest).encode(), artifact.config, artifact.blobs)


def test_an_implausibly_large_config_is_refused_unread(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    kit = packed(tmp_path / "kit", {"m.bin": b"m"}, model={"path": "m.bin"})
    size = MAX_CONFIG_SIZE + 1
    push(registry, "v1", with_manifest(kit, lambda m: m["config"].update(size=size)))
    assert refused(tmp_path, registry, f"{KIT}:v1") == (
        f"{KIT}:v1: config of {size} bytes is implausibly large"
    )
    assert not blob_asked(registry, json.loads(kit.manifest)["config"]["digest"])


@pytest.mark.parametrize(
    ("config", "problem"),
    [(b"[1, 2]", "not an object"), (b"{", "Expecting property name enclosed in double quotes")],
)
def test_a_config_that_is_no_json_object_is_refused(
    tmp_path: Path, config: bytes, problem: str
) -> None:
    registry = MemoryRegistry()
    kit = packed(tmp_path / "kit", {"m.bin": b"m"}, model={"path": "m.bin"})
    kit.replace_config(config)
    push(registry, "v1", kit)
    message = refused(tmp_path, registry, f"{KIT}:v1")
    assert message.startswith(f"{KIT}:v1: the config is not a JSON object ({problem}")


def test_a_modelpack_s_kitfile_is_its_annotation(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    (tmp_path / "kit").mkdir()
    (tmp_path / "kit/m.bin").write_bytes(b"m")
    kitfile = {"manifestVersion": "1.0.0", "package": {"name": "mp"}, "model": {"path": "m.bin"}}
    push(registry, "v1", build_modelkit(tmp_path / "kit", kitfile, artifact="modelpack"))
    opened = open_kit(tmp_path, registry, f"{KIT}:v1")
    assert opened.kit.kitfile["package"] == {"name": "mp"}  # not the derived Kitfile's
    assert "name: mp" in opened.files["Kitfile"].decode()


def test_a_modelpack_without_a_kitfile_shows_none_and_derives_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = MemoryRegistry()
    (tmp_path / "kit").mkdir()
    (tmp_path / "kit/m.bin").write_bytes(b"m")
    kitfile = {"manifestVersion": "1.0.0", "model": {"path": "m.bin"}}
    push(registry, "v1", build_modelkit(tmp_path / "kit", kitfile, artifact="modelpack-bare"))
    with caplog.at_level(logging.WARNING):
        opened = open_kit(tmp_path, registry, f"{KIT}:v1")
    assert opened.files == {"m.bin": b"m"}  # kit writes no Kitfile for it
    assert opened.kit.kitfile["model"]["path"] == "m.bin"
    assert [r.getMessage() for r in caplog.records] == [
        f"{KIT}:v1 carries no Kitfile: deriving one from its layers"
    ]


def test_the_kitfile_filter_alone_decides_whether_the_kitfile_is_shown(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    push(registry, "v1", packed(tmp_path / "kit", {"m.bin": b"m"}, model={"path": "m.bin"}))
    assert open_kit(tmp_path, registry, f"{KIT}:v1", filters=["model"]).files == {"m.bin": b"m"}
    assert open_kit(tmp_path, registry, f"{KIT}:v1", filters=["kitfile"]).files.keys() == {
        "Kitfile"
    }


# --- raw layers -------------------------------------------------------------------------------


def raw_kit(root: Path, metadata: dict[str, Any] | None) -> Artifact:
    (root).mkdir()
    (root / "model.gguf").write_bytes(b"gguf weights")
    kit = build_modelkit(
        root, {"manifestVersion": "1.0.0", "model": {"path": "model.gguf"}}, layer_format="raw"
    )

    def annotate(manifest: dict[str, Any]) -> None:
        annotations = manifest["layers"][0]["annotations"]
        key = "org.cncf.model.file.metadata+json"
        if metadata is None:
            del annotations[key]
        else:
            annotations[key] = json.dumps(metadata)

    return with_manifest(kit, annotate)


@pytest.mark.parametrize(
    ("metadata", "mode"),
    [
        ({"mode": 0o100755, "size": 12}, 0o755),  # type bits dropped: a raw layer is a file
        ({"mode": 0o4640}, 0o640),  # no setuid from whoever pushed it
        ({}, 0o644),
        (None, 0o644),  # no annotation at all
    ],
)
def test_a_raw_layer_s_file_takes_the_mode_its_annotation_gives(
    tmp_path: Path, metadata: dict[str, Any] | None, mode: int
) -> None:
    registry = MemoryRegistry()
    push(registry, "v1", raw_kit(tmp_path / "kit", metadata))
    opened = open_kit(tmp_path, registry, f"{KIT}:v1")
    assert opened.files["model.gguf"] == b"gguf weights"
    assert stat.S_IMODE(opened.modes["model.gguf"]) == mode
    assert stat.S_ISREG(opened.modes["model.gguf"])


@pytest.mark.parametrize("metadata", [{"mode": "rwx"}, {"size": [1]}, {"mode": None}])
def test_a_raw_layer_s_malformed_annotation_is_refused(
    tmp_path: Path, metadata: dict[str, Any]
) -> None:
    registry = MemoryRegistry()
    kit = raw_kit(tmp_path / "kit", metadata)
    push(registry, "v1", kit)
    digest = json.loads(kit.manifest)["layers"][0]["digest"]
    assert refused(tmp_path, registry, f"{KIT}:v1") == (
        f"the org.cncf.model.file.metadata+json annotation of layer {digest} has a malformed "
        "mode or size"
    )
