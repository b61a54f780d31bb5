"""``cache clear`` with mounts about: one that does not answer may be using the cache."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from modelkitfs.cli import cache as command
from modelkitfs.errors import ModelKitFSError


def mounts(*rows: dict[str, Any]) -> Any:
    return lambda: list(rows)


def test_a_mount_that_does_not_answer_stops_a_clear_without_yes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    monkeypatch.setattr(
        command,
        "active_mounts",
        mounts(
            {"mountpoint": "/mnt/other", "answering": True, "cache_dir": str(tmp_path / "x")},
            {"mountpoint": "/mnt/stopped", "answering": False},
        ),
    )
    with pytest.raises(ModelKitFSError) as refused:
        command._may_clear(tmp_path, yes=False)
    assert str(refused.value) == (
        f"cache {tmp_path} is used by 1 mount(s): /mnt/stopped (not answering); their next "
        "reads would download again: add --yes to clear it anyway"
    )
    assert command._may_clear(tmp_path, yes=True)


def test_mounts_of_other_caches_and_dead_ones_do_not_stop_a_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        command,
        "active_mounts",
        mounts(
            {"mountpoint": "/mnt/other", "answering": True, "cache_dir": str(tmp_path / "x")},
            {"mountpoint": "/mnt/dead", "answering": False, "dead": True},
        ),
    )
    assert command._may_clear(tmp_path, yes=False)
