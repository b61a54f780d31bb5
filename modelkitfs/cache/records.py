"""Records of a whole cache folder, beside its blocks: what every process on it agrees on
(``cache.json``: the size cap) and the running totals of finished mounts (``stats.json``).

Kept apart from the blocks (:mod:`~modelkitfs.cache.disk`) because they are about the
folder, not about any blob: read by ``cache info`` and the budget, written rarely, under a
flock so that two mounts ending at once add both their counters.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from modelkitfs.cache.blockfile import read_file
from modelkitfs.cache.locks import try_flock

Write = Callable[[Path, bytes], None]  # the cache's atomic write (it warns when it fails)

CONFIG = "cache.json"
STATS = "stats.json"
LOCK_ATTEMPTS = 1000  # of 10 ms: another process adding its counters takes far less


def read_config(root: Path) -> dict[str, int]:
    """What every process on the cache at ``root`` agrees on (its size cap), from
    ``cache.json``."""
    return _int_dict(read_file(root / CONFIG))


def write_config(root: Path, config: dict[str, int], write: Write) -> None:
    write(root / CONFIG, json.dumps(config).encode())


def read_stats(root: Path) -> dict[str, int]:
    return _int_dict(read_file(root / STATS))


def add_stats(
    root: Path, counters: dict[str, int], write: Write, failed: Callable[[OSError], None]
) -> None:
    """Add a finished mount's counters to the running totals of the cache at ``root``.
    Skipped, with the cache's one warning (``failed``), when the cache cannot be written;
    skipped when another process holds the totals for longer than ten seconds (it is stuck:
    counters are not worth a hang)."""
    lock = None
    try:
        for _ in range(LOCK_ATTEMPTS):
            if (lock := try_flock(root / "locks" / "stats")) is not None:
                break
            time.sleep(0.01)
    except OSError as exc:
        failed(exc)
        return
    if lock is None:
        return
    try:
        totals = read_stats(root)
        for key, value in counters.items():
            totals[key] = totals.get(key, 0) + int(value)
        with contextlib.suppress(OSError):  # warned about by write_file
            write(root / STATS, json.dumps(totals).encode())
    finally:
        os.close(lock)  # releases the flock


def _int_dict(raw: bytes | None) -> dict[str, int]:
    try:
        document = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(document, dict):
        return {}
    return {k: int(v) for k, v in document.items() if isinstance(v, (int, float))}
