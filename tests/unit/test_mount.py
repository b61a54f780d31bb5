"""Starting daemons: where they log, and who may read it."""

from __future__ import annotations

import stat
from pathlib import Path

from modelkitfs.mount import daemon_log


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_daemons_log_and_its_folders_are_the_caches_owners_alone(tmp_path: Path) -> None:
    cache = tmp_path / "new" / "cache"
    path, fault = daemon_log(str(cache))
    assert fault is None and path.is_file()
    assert [mode(p) for p in (path, path.parent, cache, cache.parent)] == [0o600] + [0o700] * 3
