"""Hostile kits through real mounts: tar members that try to leave the mount, links, devices,
collisions, lying sizes and numbers, and a million empty files. The mount stays inside itself,
the rest of the kit stays usable, and each problem is logged naming its layer and entry."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from modelkitfs.errors import MountError
from tests.conftest import Mounts, daemon_pid, write
from tests.support.kitbuilder import Artifact, Member, build_modelkit, empty_files_tar, raw_tar

KITFILE = {
    "manifestVersion": "1.0.0",
    "model": {"path": "model/weights.bin"},
    "datasets": [{"name": "data", "path": "data"}],
    "docs": [{"path": "README.md"}],
}
WEIGHTS = b"w" * 300_000


def kit_with(tmp_path: Path, **layers: bytes) -> tuple[Artifact, dict[str, str]]:
    """The kit above with the layers of the given kinds (``dataset``, ``docs``) swapped for
    these bytes; returns it and the digest of each layer kind."""
    write(tmp_path / "model/weights.bin", WEIGHTS)
    write(tmp_path / "data/placeholder.txt", b"replaced")
    write(tmp_path / "README.md", b"# readme")
    kit = build_modelkit(tmp_path, KITFILE)
    for kind, data in layers.items():
        position = next(
            i
            for i, layer in enumerate(json.loads(kit.manifest)["layers"])
            if f".{kind}.v1." in layer["mediaType"]
        )
        kit.replace_layer(position, data)
    digests = {
        layer["mediaType"].split(".")[3]: layer["digest"]
        for layer in json.loads(kit.manifest)["layers"]
    }
    return kit, digests


def garbled(archive: bytes, start: int, value: bytes) -> bytes:
    """``archive`` with a field of its first header overwritten, its checksum still right."""
    block = bytearray(archive[:512])
    block[start : start + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block) + archive[512:]


def test_members_that_leave_the_layer_or_are_not_files_are_skipped(
    tmp_path: Path, publish, mounts: Mounts
) -> None:
    hostile = raw_tar(
        [
            Member("data/", typeflag=b"5", mode=0o755),
            Member("data/ok.txt", b"fine"),
            Member("../escape.txt", b"out"),
            Member("/etc/absolute.txt", b"out"),
            Member("data/innocent", b"out", pax={"path": "../../pax-escape"}),
            Member("data/nul", b"out", pax={"path": "data/a\0b"}),
            Member("data/dup.txt", b"first"),
            Member("data/dup.txt", b"second!"),
            Member("data/link", typeflag=b"2", linkname="/etc/passwd"),
            Member("data/uplink", typeflag=b"2", linkname="../../../etc/shadow"),
            Member("data/hard", typeflag=b"1", linkname="data/ok.txt"),
            Member("data/chardev", typeflag=b"3"),
            Member("data/fifo", typeflag=b"6"),
            Member("data/lying-pax.txt", b"0123456789", pax={"size": "5"}),
            Member("data/ok.txt/inside-a-file", b"out"),
        ]
    )
    kit, digests = kit_with(tmp_path / "src", dataset=hostile)
    mountpoint = mounts.mount(publish(kit, "hostile/members"))
    found = sorted(
        str(Path(d, n).relative_to(mountpoint))
        for d, dirs, files in os.walk(mountpoint)
        for n in dirs + files
    )
    assert found == [
        "Kitfile",
        "README.md",
        "data",
        "data/dup.txt",
        "data/lying-pax.txt",
        "data/ok.txt",
        "model",
        "model/weights.bin",
    ]
    assert (mountpoint / "data/ok.txt").read_bytes() == b"fine"
    assert (mountpoint / "data/dup.txt").read_bytes() == b"second!"  # the last one, as tar does
    assert (mountpoint / "data/lying-pax.txt").read_bytes() == b"01234"  # PAX wins, as in Go
    assert (mountpoint / "model/weights.bin").read_bytes() == WEIGHTS
    assert not (tmp_path / "escape.txt").exists() and not Path("/pax-escape").exists()
    log = mounts.log
    layer = digests["dataset"]
    for name in ("../escape.txt", "/etc/absolute.txt", "../../pax-escape", "data/a\0b"):
        assert f"layer {layer}: skipping {name!r}: its path leaves the layer" in log, name
    for kind, name in [
        ("symlink", "data/link"),
        ("symlink", "data/uplink"),
        ("hardlink", "data/hard"),
    ]:
        assert f"{layer}: skipping {kind} {name!r}" in log
    for flag, name in [("3", "data/chardev"), ("6", "data/fifo")]:
        assert f"layer {layer}: skipping {name!r}: unsupported tar entry type b'{flag}'" in log
    assert f"{layer}: skipping 'data/ok.txt/inside-a-file'" in log


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (raw_tar([Member("README.md", b"# readme", size=10**9)], end=False), "truncated inside"),
        (garbled(raw_tar([Member("README.md", b"# readme")]), 100, b"06x0644\0"), "bad mode field"),
        (raw_tar([Member("README.md", b"# readme", pax={"size": "-3"})]), "corrupt PAX size"),
        (raw_tar([Member("README.md", b"# readme", pax={"path": "x"})])[:700], "truncated"),
    ],
    ids=["size-beyond-blob", "garbage-number", "negative-pax-size", "cut-short"],
)
def test_a_broken_layer_fails_alone_with_its_reason(
    archive: bytes, reason: str, tmp_path: Path, publish, mounts: Mounts
) -> None:
    kit, digests = kit_with(tmp_path / "src", docs=archive)
    mountpoint = mounts.mount(publish(kit, "hostile/broken"))
    with pytest.raises(OSError) as failure:
        (mountpoint / "README.md").read_bytes()
    assert failure.value.errno == errno.EIO
    # The rest of the kit is still there.
    assert (mountpoint / "model/weights.bin").read_bytes() == WEIGHTS
    assert (mountpoint / "data/placeholder.txt").read_bytes() == b"replaced"
    log = mounts.log
    assert f"layer {digests['docs']}" in log and reason in log
    assert "Traceback" not in log
    os.kill(daemon_pid(mountpoint), 0)  # and the daemon lives on


def test_a_layer_of_a_million_empty_files(tmp_path: Path, publish, mounts: Mounts) -> None:
    count = 1_000_000
    names = (f"data/d{i // 10_000}/f{i}" for i in range(count))
    kit, _ = kit_with(tmp_path / "src", dataset=empty_files_tar(names))
    mountpoint = mounts.mount(publish(kit, "hostile/million"))
    assert (mountpoint / "model/weights.bin").read_bytes() == WEIGHTS  # no listing needed
    assert len(os.listdir(mountpoint / "data")) == count // 10_000
    assert len(os.listdir(mountpoint / "data/d42")) == 10_000
    assert os.stat(mountpoint / "data/d99/f999999").st_size == 0
    assert (mountpoint / "README.md").read_bytes() == b"# readme"


@pytest.mark.parametrize("where", ["config", "manifest"])
def test_enormous_documents_are_refused_unread(
    where: str, tmp_path: Path, publish, mounts: Mounts, proxy
) -> None:
    write(tmp_path / "weights.bin", b"w")
    kitfile: dict = {"manifestVersion": "1.0.0", "model": {"path": "weights.bin"}}
    if where == "config":
        kitfile["package"] = {"description": "x" * (5 * 1024 * 1024)}
    kit = build_modelkit(tmp_path, kitfile)
    reference = publish(kit, f"hostile/enormous-{where}")
    proxy.reset()
    if where == "manifest":  # the registry refuses to store one: the proxy makes it so
        proxy.inject("bloat", size=64 * 1024 * 1024, target="manifest")
    with pytest.raises(MountError) as refused:
        mounts.mount(reference)
    message = str(refused.value)
    assert "\n" not in message
    if where == "config":
        assert "implausibly large" in message
        assert proxy.blob_bytes == 0  # refused from its descriptor, never fetched
    else:
        assert "more than 4194304 bytes" in message and "not a ModelKit" in message


@pytest.mark.parametrize(
    ("config", "phrases"),
    [
        (b"manifestVersion: 1.0.0\nmodel: {path: weights.bin", ["not a JSON object"]),
        (b'["model", "weights.bin"]', ["not a JSON object", "not an object"]),
        (b'{"model": {"path": "weights.bin", "parts": "adapter"}}', ["model.parts must be a list"]),
        (b'{"model": {"path": "weights.bin"}, "datasets": [{"path": 7}]}', ["datasets[0].path"]),
    ],
    ids=["yaml", "list", "parts-not-a-list", "path-not-a-string"],
)
def test_a_config_that_is_no_kitfile_is_refused(
    config: bytes, phrases: list[str], tmp_path: Path, publish, mounts: Mounts
) -> None:
    write(tmp_path / "weights.bin", b"w")
    kit = build_modelkit(tmp_path, {"manifestVersion": "1.0.0", "model": {"path": "weights.bin"}})
    kit.replace_config(config)
    with pytest.raises(MountError) as refused:
        mounts.mount(publish(kit, "hostile/config"))
    message = str(refused.value)
    assert "\n" not in message and "Traceback" not in message
    for phrase in phrases:
        assert phrase in message
