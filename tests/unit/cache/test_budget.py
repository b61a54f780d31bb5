"""The size cap belongs to the cache folder (issue cases 10 and 13)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from modelkitfs.cache import DiskCache
from modelkitfs.cache.budget import MIN_MAX_BYTES, CacheBudget, check_max_size, settle_cap
from modelkitfs.errors import ModelKitFSError
from modelkitfs.session.options import MountOptions

MiB = 1024 * 1024


@pytest.mark.parametrize("size", ["0", "1M", "63M"])
def test_a_cap_too_small_to_cache_anything_is_refused(size: str) -> None:
    """Case 13: ``--cache-max-size 0`` would evict every block as it is written."""
    with pytest.raises(ModelKitFSError, match="below the minimum of 64 MiB"):
        MountOptions(cache_max_size=size).check()
    assert check_max_size("64M") == MIN_MAX_BYTES


def test_the_first_cap_asked_for_is_the_caches_and_others_follow_it(tmp_path: Path) -> None:
    """Case 10: a second process asking for less, while the first uses the cache, keeps
    the recorded cap (and is told why)."""
    first, second = DiskCache(tmp_path), DiskCache(tmp_path)
    first.register()
    assert settle_cap(first, 256 * MiB) == (256 * MiB, None)
    cap, warning = settle_cap(second, 64 * MiB)
    assert cap == 256 * MiB
    assert warning and str(tmp_path) in warning and "1 other process" in warning
    assert settle_cap(second, None) == (256 * MiB, None)  # no cap asked: the cache's
    assert settle_cap(second, 512 * MiB) == (512 * MiB, None)  # raising harms nobody
    assert first.read_config()["max_size"] == 512 * MiB
    first.process.release()
    assert settle_cap(second, 128 * MiB) == (128 * MiB, None)  # alone: lowered for all


def test_every_budget_on_a_cache_evicts_to_the_recorded_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = DiskCache(tmp_path), DiskCache(tmp_path)

    async def main() -> None:
        big = CacheBudget(first, 256 * MiB)
        await big.start()
        small = CacheBudget(second, 64 * MiB)
        with caplog.at_level(logging.WARNING):
            await small.start()
        assert small.max_bytes == 256 * MiB
        big.cache.write_config({"max_size": 300 * MiB})  # raised by a third process
        await big.prune()
        assert big.max_bytes == 300 * MiB

    trio.run(main)
    assert "keeps its size cap of 256 MiB" in caplog.text
