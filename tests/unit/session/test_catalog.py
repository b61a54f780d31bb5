"""The catalog of kits a cache has held: written when a kit is opened, read by list and cache
ls; a cache that cannot be written keeps no record and fails nothing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from modelkitfs.session.catalog import owners, record_kit, recorded_kits


def fake_kit(manifest: str, *layers: tuple[str, str, str, int]) -> object:
    return SimpleNamespace(
        manifest_digest=manifest,
        manifest=SimpleNamespace(
            layers=[
                SimpleNamespace(
                    digest=digest, base=kind, filepath=path, descriptor=SimpleNamespace(size=size)
                )
                for digest, kind, path, size in layers
            ]
        ),
    )


def test_kits_are_recorded_with_their_references_most_recent_first(tmp_path: Path) -> None:
    kit = fake_kit("sha256:" + "a" * 64, ("sha256:" + "b" * 64, "model", "model.bin", 7))
    record_kit(tmp_path, "r.io/team/k:v1", kit)  # type: ignore[arg-type]
    record_kit(tmp_path, "r.io/team/k:latest", kit)  # type: ignore[arg-type]
    (record,) = recorded_kits(tmp_path)
    assert record.references == ("r.io/team/k:latest", "r.io/team/k:v1")
    assert owners([record])["sha256:" + "b" * 64][0][1].path == "model.bin"


def test_a_cache_that_cannot_be_written_keeps_no_record(tmp_path: Path) -> None:
    kit = fake_kit("sha256:" + "c" * 64)
    (tmp_path / "file").write_text("not a folder")
    record_kit(tmp_path / "file" / "cache", "r.io/k:v1", kit)  # type: ignore[arg-type]
    assert recorded_kits(tmp_path / "file" / "cache") == []
    (tmp_path / "kits").mkdir()
    (tmp_path / "kits" / "broken.json").write_text("{not json")
    assert recorded_kits(tmp_path) == []
