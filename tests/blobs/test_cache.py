"""The disk cache: whole files or none, whatever happens to a writer."""

from __future__ import annotations

from pathlib import Path

from modelkitfs.blobs import DiskCache

DIGEST = "sha256:" + "ab" * 32


def test_block_round_trip_and_layout(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    cache.write_block(DIGEST, 1024, 3, b"x" * 1024)
    assert cache.read_block(DIGEST, 1024, 3, 1024) == b"x" * 1024
    assert (
        cache.block_path(DIGEST, 1024, 3) == tmp_path / "blocks/sha256/ab" / ("ab" * 32) / "1024/3"
    )
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_leftovers_of_a_killed_writer_are_never_trusted(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    path = cache.block_path(DIGEST, 1024, 0)
    path.parent.mkdir(parents=True)
    (path.parent / ".tmp-abandoned").write_bytes(b"half")  # killed before its rename
    assert cache.read_block(DIGEST, 1024, 0, 1024) is None
    path.write_bytes(b"y" * 100)  # truncated by something outside our control
    assert cache.read_block(DIGEST, 1024, 0, 1024) is None


def test_meta_round_trip(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    assert cache.read_meta(DIGEST, "tar-index.v1.json") is None
    cache.write_meta(DIGEST, "tar-index.v1.json", b"{}")
    assert cache.read_meta(DIGEST, "tar-index.v1.json") == b"{}"
