"""Prometheus metrics of a daemon (``--metrics HOST:PORT`` on ``mount`` and ``serve``).

The layers already count what they do (each registry client its requests and bytes, each blob
store its cache hits): the collector reads those counters when scraped, so the read path pays
nothing for metrics. Only FUSE operations are timed as they happen, by wrapping the operations
object pyfuse3 calls, and only when metrics are on. Labels are bounded: registry, repository,
operation, error; never a file path or a tag.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import prometheus_client
import pyfuse3
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from modelkitfs.errors import ModelKitFSError
from modelkitfs.registry.source import LATENCY_BUCKETS  # the registries' request buckets
from modelkitfs.session.options import metrics_address
from modelkitfs.session.sources import Sources

log = logging.getLogger(__name__)

OPERATIONS = (
    "lookup", "getattr", "readlink", "opendir", "readdir", "open", "read", "statfs",
    "listxattr", "getxattr",
)  # fmt: skip
# Seconds: a page-cache-cold 4 KiB lookup takes a fraction of a ms; a read that waits on the
# network takes up to the timeout.
# Counters each registry client or blob store keeps: (metric, help, the counter's attribute).
REGISTRY_COUNTERS = (
    ("modelkitfs_registry_requests", "HTTP requests sent to registries", "requests"),
    ("modelkitfs_registry_blob_bytes", "Blob bytes fetched", "blob_bytes"),
    ("modelkitfs_registry_ranges", "Range downloads of blobs", "ranges"),
    ("modelkitfs_registry_retries", "Requests retried after a failure", "retries"),
)
STORE_COUNTERS = (
    ("modelkitfs_cache_write_failures", "Blocks the disk cache could not keep", "write_failures"),
    ("modelkitfs_blobs_verified", "Blobs that matched their digest", "verified_blobs"),
    ("modelkitfs_blobs_corrupt", "Blobs that did not match their digest", "corrupt_blobs"),
)
FUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120)


def _counters(
    specs: tuple[tuple[str, str, str], ...], labels: list[str]
) -> dict[str, CounterMetricFamily]:
    """A counter family for each of ``specs``, by the attribute it counts."""
    return {
        counter: CounterMetricFamily(name, text, labels=labels) for name, text, counter in specs
    }


class SourcesCollector(Collector):
    """What a daemon's sources counted, read at each scrape."""

    def __init__(self, sources: Sources, kits_loaded: Callable[[], int]) -> None:
        self.sources = sources
        self.kits_loaded = kits_loaded

    def collect(self) -> Iterator[Metric]:
        registry = ["registry"]
        sent = _counters(REGISTRY_COUNTERS, registry)
        answers = CounterMetricFamily(
            "modelkitfs_registry_responses",
            "Answers from registries and their object storage, by HTTP status",
            labels=[*registry, "status"],
        )
        latency = HistogramMetricFamily(
            "modelkitfs_registry_request_seconds",
            "Time from sending a request to having read its answer",
            labels=registry,
        )
        for name, client in list(self.sources.clients.items()):
            stats = client.stats
            for counter, family in sent.items():
                family.add_metric([name], getattr(stats, counter))
            for status, count in list(stats.statuses.items()):
                answers.add_metric([name, str(status)], count)
            cumulative = list(itertools.accumulate(stats.latency))
            buckets = [(f"{le:g}", n) for le, n in zip(LATENCY_BUCKETS, cumulative, strict=False)]
            latency.add_metric([name], [*buckets, ("+Inf", cumulative[-1])], stats.latency_sum)
        yield from (*sent.values(), answers, latency)

        labels = ["registry", "repository"]
        hits = CounterMetricFamily(
            "modelkitfs_cache_blocks",
            "Blocks read, by where they came from (the kernel's page cache cannot be seen)",
            labels=[*labels, "level"],
        )
        kept = _counters(STORE_COUNTERS, labels)
        for (registry_name, repository), store in list(self.sources.stores.items()):
            key = [registry_name, repository]
            hits.add_metric([*key, "memory"], store.stats.memory_hits)
            hits.add_metric([*key, "disk"], store.stats.disk_hits)
            hits.add_metric([*key, "network"], store.stats.downloaded_blocks)
            for counter, family in kept.items():
                family.add_metric(key, getattr(store.stats, counter))
        yield from (hits, *kept.values())

        budget = self.sources.budget
        if budget.usage is not None:  # None until measured (for good if it cannot be)
            yield GaugeMetricFamily(
                "modelkitfs_cache_bytes", "Bytes the disk cache holds (about)", value=budget.usage
            )
        evictions = CounterMetricFamily(
            "modelkitfs_cache_evictions", "Evictions run to keep the cache within its cap"
        )
        evictions.add_metric([], budget.prunes)
        evicted = CounterMetricFamily(
            "modelkitfs_cache_evicted_bytes", "Bytes evictions took from the cache (about)"
        )
        evicted.add_metric([], budget.evicted_bytes)
        yield from (evictions, evicted)
        checks = CounterMetricFamily(
            "modelkitfs_signature_checks",
            "Manifest digests checked against the signature policy, by result (refused: "
            "served nothing; warned: served by a rule in warn mode)",
            labels=["result"],
        )
        for result, count in self.sources.signature_checks.items():
            checks.add_metric([result], count)
        yield checks
        if budget.max_bytes is not None:
            yield GaugeMetricFamily(
                "modelkitfs_cache_max_bytes", "The disk cache's cap", value=budget.max_bytes
            )
        yield GaugeMetricFamily(
            "modelkitfs_kits_loaded", "Kits this daemon serves now", value=self.kits_loaded()
        )


class FuseMetrics:
    """Latency and errors of FUSE operations, by operation."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = prometheus_client.Histogram(
            "modelkitfs_fuse_operation_seconds",
            "Time to answer a FUSE request",
            ["operation"],
            buckets=FUSE_BUCKETS,
            registry=registry,
        )
        self.errors = prometheus_client.Counter(
            "modelkitfs_fuse_errors",
            "FUSE requests answered with an error, by errno name",
            ["operation", "error"],
            registry=registry,
        )

    def instrument(self, operations: pyfuse3.Operations) -> None:
        """Time every operation pyfuse3 calls on ``operations`` (its instance attributes
        shadow the class's methods)."""
        for name in OPERATIONS:
            setattr(operations, name, self._timed(name, getattr(operations, name)))

    def _timed(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        seconds = self.seconds.labels(name)

        @functools.wraps(method)
        async def timed(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*args)
            except pyfuse3.FUSEError as exc:
                if exc.errno != errno.ENOENT or name != "lookup":  # a miss is no error
                    self.errors.labels(name, errno.errorcode.get(exc.errno, str(exc.errno))).inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)

        return timed


def serve_metrics(
    address: str,
    sources: Sources,
    operations: pyfuse3.Operations,
    kits_loaded: Callable[[], int],
) -> Callable[[], None]:
    """Serve metrics at ``address`` (in a thread of its own); returns what stops it."""
    host, port = metrics_address(address)
    registry = CollectorRegistry()
    registry.register(SourcesCollector(sources, kits_loaded))
    FuseMetrics(registry).instrument(operations)
    try:
        server, thread = prometheus_client.start_http_server(port, host, registry=registry)
    except OSError as exc:
        raise ModelKitFSError(
            f"cannot serve metrics on {address}: {exc.strerror}; choose another --metrics port"
        ) from None
    log.info("serving metrics at http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        thread.join()

    return stop
