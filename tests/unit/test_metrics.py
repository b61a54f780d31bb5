"""Prometheus metrics: a scrape reads the layers' own counters, so what it reports is what the
registry in memory answered and where each block came from; labels never hold a path or a tag;
FUSE operations are timed, and their errors counted, except a lookup's miss."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyfuse3
import pytest
import trio
from prometheus_client.registry import CollectorRegistry

from modelkitfs.kit import ROOT_INODE
from modelkitfs.metrics import FuseMetrics, SourcesCollector
from modelkitfs.options import MountOptions
from modelkitfs.reference import parse_reference
from modelkitfs.registry.testing import MemoryRegistry
from modelkitfs.sources import Sources
from tests.support.kitbuilder import build_modelkit
from tests.support.waiting import until

MiB = 1024 * 1024
WEIGHTS = np.random.default_rng(8).bytes(3 * MiB + 5)
REGISTRY = {"registry": "reg.test"}
STORE = {"registry": "reg.test", "repository": "team/kit"}


@pytest.fixture
def registry(tmp_path: Path) -> MemoryRegistry:
    (tmp_path / "src").mkdir()
    (tmp_path / "src/weights.bin").write_bytes(WEIGHTS)
    kit = build_modelkit(
        tmp_path / "src", {"manifestVersion": "1.0.0", "model": {"path": "weights.bin"}}
    )
    registry = MemoryRegistry()
    registry.push("team/kit", "v1", kit.manifest, kit.media_type, kit.blobs)
    return registry


Scrape = Callable[[str, dict[str, str]], float | None]
Read = Callable[[], Awaitable[None]]
Test = Callable[[Sources, Scrape, Read], Awaitable[None]]


def session(tmp_path: Path, registry: MemoryRegistry, test: Test) -> None:
    """Run ``test(sources, scrape, read)`` in a session whose registry ``reg.test`` is
    ``registry``: ``scrape(name, labels)`` is a sample of a scrape made then, ``read()`` reads
    the kit's weights whole."""

    async def main() -> None:
        async with Sources(MountOptions(cache_dir=str(tmp_path / "cache"))) as sources:
            sources.clients["reg.test"] = registry.client()
            kit = await sources.open_kit(parse_reference("reg.test/team/kit:v1"))
            metrics = CollectorRegistry()
            metrics.register(SourcesCollector(sources, lambda: 1))

            async def read() -> None:
                node = await kit.tree.lookup(ROOT_INODE, "weights.bin")
                assert node is not None
                assert await kit.tree.read(node, 0, node.size) == WEIGHTS

            try:
                await test(sources, metrics.get_sample_value, read)
            finally:
                await kit.tree.aclose()

    trio.run(main)


def test_a_scrape_reports_what_the_registry_answered(
    tmp_path: Path, registry: MemoryRegistry
) -> None:
    async def test(sources: Sources, scrape: Scrape, read: Read) -> None:
        await read()
        documents, ranges = list(registry.documents), list(registry.ranges.served)
        assert scrape("modelkitfs_registry_requests_total", REGISTRY) == len(documents) + len(
            ranges
        )
        assert scrape("modelkitfs_registry_ranges_total", REGISTRY) == len(ranges)
        document_bytes = sum(len(registry.ranges.blobs.get(path, b"")) for path in documents)
        range_bytes = sum(r.end - r.start for r in ranges)
        assert scrape("modelkitfs_registry_blob_bytes_total", REGISTRY) == (
            document_bytes + range_bytes
        )
        statuses = {"200": len(documents), "206": len(ranges)}
        for status, count in statuses.items():
            labels = {**REGISTRY, "status": status}
            assert scrape("modelkitfs_registry_responses_total", labels) == count
        assert scrape("modelkitfs_registry_retries_total", REGISTRY) == 0
        timed = scrape("modelkitfs_registry_request_seconds_count", REGISTRY)
        assert timed == len(documents) + len(ranges)
        infinite = {**REGISTRY, "le": "+Inf"}
        assert scrape("modelkitfs_registry_request_seconds_bucket", infinite) == timed

    session(tmp_path, registry, test)


def test_a_scrape_says_where_blocks_came_from_as_they_are_read(
    tmp_path: Path, registry: MemoryRegistry
) -> None:
    def blocks(scrape: Scrape, level: str) -> float | None:
        return scrape("modelkitfs_cache_blocks_total", {**STORE, "level": level})

    async def test(sources: Sources, scrape: Scrape, read: Read) -> None:
        assert blocks(scrape, "network") == 0
        await read()
        layer = max(len(blob) for blob in registry.ranges.blobs.values())
        assert blocks(scrape, "network") == -(-layer // MiB) == 4  # the layer's 1 MiB blocks
        memory = blocks(scrape, "memory")
        await read()  # again: from memory, nothing from the network
        assert blocks(scrape, "network") == 4
        assert memory is not None and blocks(scrape, "memory") == memory + 4
        await sources.store_for(parse_reference("reg.test/team/kit:v1")).flush()
        assert scrape("modelkitfs_blobs_verified_total", STORE) == 1  # the layer, read whole
        assert scrape("modelkitfs_blobs_corrupt_total", STORE) == 0
        assert scrape("modelkitfs_cache_write_failures_total", STORE) == 0

    session(tmp_path, registry, test)


def test_the_cache_s_size_and_cap_are_reported_once_measured(tmp_path: Path) -> None:
    """Until the session has measured its cache, its size is unknown and left out: before,
    the scrape failed whole (and for good, where the cache could not be measured)."""

    async def main() -> None:
        options = MountOptions(cache_dir=str(tmp_path / "cache"), cache_max_size=100 * MiB)
        async with Sources(options) as sources:
            kits = [0]
            metrics = CollectorRegistry()
            metrics.register(SourcesCollector(sources, lambda: kits[0]))
            assert sources.budget.usage is None  # its measuring has not begun
            assert metrics.get_sample_value("modelkitfs_cache_bytes", {}) is None
            assert metrics.get_sample_value("modelkitfs_kits_loaded", {}) == 0
            await until(lambda: sources.budget.usage is not None, "the cache measured")
            usage = metrics.get_sample_value("modelkitfs_cache_bytes", {})
            assert usage == sources.budget.usage
            assert metrics.get_sample_value("modelkitfs_cache_max_bytes", {}) == 100 * MiB
            assert metrics.get_sample_value("modelkitfs_cache_evictions_total", {}) == 0
            kits[0] = 3
            assert metrics.get_sample_value("modelkitfs_kits_loaded", {}) == 3  # read each time
            for result in ("passed", "refused", "warned"):
                labels = {"result": result}
                assert metrics.get_sample_value("modelkitfs_signature_checks_total", labels) == 0

    trio.run(main)


def test_no_label_holds_a_path_or_a_tag(tmp_path: Path, registry: MemoryRegistry) -> None:
    async def test(sources: Sources, scrape: Scrape, read: Read) -> None:
        await read()
        metrics = CollectorRegistry()
        metrics.register(SourcesCollector(sources, lambda: 1))
        values = {
            value
            for family in metrics.collect()
            for sample in family.samples
            for name, value in sample.labels.items()
            if name != "le"
        }
        levels, results = {"memory", "disk", "network"}, {"passed", "refused", "warned"}
        assert values == {"reg.test", "team/kit", "200", "206", *levels, *results}

    session(tmp_path, registry, test)


# --- FUSE operations ------------------------------------------------------------------------


class Operations(pyfuse3.Operations):
    """Answers as a kit's operations do: a name that is not there, a file that cannot be read."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        self.calls.append("lookup")
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        self.calls.append("getattr")
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.calls.append("read")
        if off:
            raise pyfuse3.FUSEError(errno.EIO)
        return b"bytes"

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        raise RuntimeError("a bug")


def test_fuse_operations_are_timed_and_their_errors_counted_but_a_lookup_s_miss() -> None:
    metrics = CollectorRegistry()
    operations = Operations()
    FuseMetrics(metrics).instrument(operations)

    async def main() -> None:
        assert await operations.read(1, 0, 5) == b"bytes"  # the answer passes through
        for call in (
            operations.lookup(1, b"missing", None),
            operations.getattr(5, None),
            operations.read(1, 4096, 5),
        ):
            with pytest.raises(pyfuse3.FUSEError):
                await call
        with pytest.raises(RuntimeError, match="a bug"):
            await operations.statfs(None)

    trio.run(main)
    assert operations.calls == ["read", "lookup", "getattr", "read"]

    def seconds(operation: str) -> float | None:
        return metrics.get_sample_value(
            "modelkitfs_fuse_operation_seconds_count", {"operation": operation}
        )

    def errors(operation: str, error: str) -> float | None:
        labels = {"operation": operation, "error": error}
        return metrics.get_sample_value("modelkitfs_fuse_errors_total", labels)

    assert (seconds("read"), seconds("lookup"), seconds("getattr"), seconds("statfs")) == (
        2,
        1,
        1,
        1,
    )
    assert seconds("readdir") == 0  # every operation is there, called or not
    assert errors("lookup", "ENOENT") is None  # a miss is an answer, not an error
    assert errors("getattr", "ENOENT") == 1
    assert errors("read", "EIO") == 1
