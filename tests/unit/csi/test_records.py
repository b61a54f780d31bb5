"""The plugin's records of what it published: one file per target, root's alone."""

from __future__ import annotations

from pathlib import Path

from modelkitfs.csi.records import OWN, SHARED, Record, Records


def test_a_record_survives_a_new_instance_and_is_private(tmp_path: Path) -> None:
    records = Records(tmp_path / "volumes")
    record = Record("csi-1", "/pods/a/mount", {"reference": "r.example/x:v1"}, SHARED, "/kits/x")
    records.put(record)
    again = Records(tmp_path / "volumes")
    assert again.get("/pods/a/mount") == record
    assert again.all() == [record]
    assert again.get("/pods/b/mount") is None
    (path,) = (tmp_path / "volumes").iterdir()
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "volumes").stat().st_mode & 0o777 == 0o700


def test_put_replaces_and_delete_forgets(tmp_path: Path) -> None:
    records = Records(tmp_path)
    records.put(Record("csi-1", "/t", {}, SHARED))
    records.put(Record("csi-1", "/t", {}, OWN))
    assert [r.how for r in records.all()] == [OWN]
    records.delete("/t")
    records.delete("/t")  # twice: fine
    assert records.all() == []
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_an_unreadable_record_is_ignored(tmp_path: Path) -> None:
    records = Records(tmp_path)
    records.put(Record("csi-1", "/t", {}, OWN))
    (tmp_path / "broken.json").write_text("{")
    assert [r.volume_id for r in records.all()] == ["csi-1"]
