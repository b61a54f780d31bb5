"""The benchmark's figures, setting by setting; each beside a baseline measured in the same run.

The numbers in parentheses are the targets (issues 6 and 22); a figure is never asserted.
"""

from __future__ import annotations

import os
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_tools import (
    MODEL,
    ONE_TENSOR,
    Bench,
    MiB,
    PeakRss,
    curl,
    daemon_pid,
    evict_from_page_cache,
    ratarmount_read,
    read_all,
    read_head,
    registry_pid,
    stats,
    timed,
)
from machine import CpuUse, PageCacheGrowth, folio_kib
from safetensors import safe_open

from tests.e2e.test_serve import Service
from tests.support.kitbuilder import build_modelkit, push
from tests.support.link_proxy import LinkProxy


def loopback(
    bench: Bench,
    registry: str,
    source: Path,
    model_digest: str,
    data_digest: str,
    layer_tar: Path,
    tensor_mib: float,
) -> None:
    print(f"loopback: the registry at {registry}", flush=True)
    ref = f"{registry}/bench/kit:plain"
    size = (source / MODEL).stat().st_size / MiB
    server = registry_pid(bench)
    cpu = CpuUse({"registry": server, "curl": None})
    curl_s = curl(f"http://{registry}/v2/bench/kit/blobs/{model_digest}")
    bench.add("curl of the model blob", size / curl_s, "MiB/s", cpu.stop(size))
    local_s = min(timed(lambda: read_all(source / MODEL)) for _ in range(2))
    bench.add("cat of the local file (page cache)", size / local_s, "MiB/s")

    with bench.mounted(ref, "cold") as mnt:
        pid = daemon_pid(mnt)
        rss = PeakRss(pid)
        cpu = CpuUse({"registry": server, "daemon": pid, "reader": os.getpid()})
        cold_s = timed(lambda: read_all(mnt / MODEL))
        cold_cpu = cpu.stop(size, settle="daemon")
        peak_stream = rss.stop()
        reread_s = timed(lambda: read_all(mnt / MODEL))
        folios = folio_kib(mnt / MODEL, 64 * MiB), folio_kib(source / MODEL, 64 * MiB)
    bench.add(
        "1 cold sequential read",
        size / cold_s,
        "MiB/s",
        f"{curl_s / cold_s:.2f}x curl (0.5); {cold_cpu}",
    )
    bench.add(
        "4 re-read, same mount", size / reread_s, "MiB/s", f"{local_s / reread_s:.2f}x cat (0.8)"
    )
    if None not in folios:
        bench.add("4 page-cache folio, mount", folios[0], "KiB", f"local file: {folios[1]:.0f} KiB")
    with bench.mounted(ref, "cold") as mnt:
        cpu = CpuUse({"daemon": daemon_pid(mnt), "reader": os.getpid()})
        warm_s = timed(lambda: read_all(mnt / MODEL))
        warm_cpu = cpu.stop(size)
    ratarmount = ratarmount_read(bench.base, layer_tar, size)
    rat_note = f"{ratarmount[0] / warm_s:.2f}x ratarmount (1.0), " if ratarmount else ""
    bench.add(
        "3 warm read, new mount",
        size / warm_s,
        "MiB/s",
        f"{rat_note}{local_s / warm_s:.2f}x cat (0.35); {warm_cpu}",
    )
    if ratarmount:
        rat_s, rat_cpu = ratarmount
        bench.add("ratarmount of the layer tar on disk", size / rat_s, "MiB/s", rat_cpu)

    with bench.mounted(ref, "ttfb") as mnt:
        before = stats(mnt)["requests"]
        ttfb = timed(lambda: read_head(mnt / MODEL))
        bench.add(
            "6 time to first byte (open + 4 KiB)",
            ttfb * 1000,
            "ms",
            f"{stats(mnt)['requests'] - before} requests (3)",
        )

    safetensors_figures(bench, ref, "st", curl_s, size / cold_s, tensor_mib)

    with bench.mounted(ref, "random") as mnt:
        rss = PeakRss(daemon_pid(mnt))
        blocks = int(size) - 1

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            with open(mnt / MODEL, "rb", buffering=0) as f:
                for _ in range(16):
                    os.pread(f.fileno(), MiB, rng.randrange(blocks) * MiB)

        random_s = timed(lambda: list(ThreadPoolExecutor(16).map(reader, range(16))))
        peak_random = rss.stop()
    bench.add("7 daemon RSS peak, streaming", peak_stream, "MiB", "(200)")
    bench.add(
        "7 daemon RSS peak, 16 random readers",
        peak_random,
        "MiB",
        f"{256 / random_s:.0f} MiB/s read (200)",
    )

    listing_figures(bench, registry, data_digest, "ls")

    gz = f"{registry}/bench/kit:gzip"
    with bench.mounted(gz, "gzip") as mnt:
        gzip_first = timed(lambda: read_all(mnt / MODEL))
    with bench.mounted(gz, "gzip") as mnt:
        gzip_warm = timed(lambda: read_all(mnt / MODEL))
    bench.add(
        "gzip layer, first read",
        size / gzip_first,
        "MiB/s",
        f"{cold_s / gzip_first:.2f}x plain cold",
    )
    bench.add(
        "gzip layer, re-read (new mount)",
        size / gzip_warm,
        "MiB/s",
        f"{warm_s / gzip_warm:.2f}x plain warm",
    )


def safetensors_figures(
    bench: Bench, ref: str, cache: str, curl_s: float, cold_rate: float, tensor_mib: float
) -> None:
    with bench.mounted(ref, f"{cache}-one") as mnt:
        before = stats(mnt)["fetched_bytes"]

        def one() -> None:
            with safe_open(mnt / MODEL, framework="numpy") as f:
                f.get_tensor(ONE_TENSOR)

        one_s = timed(one)
        fetched = (stats(mnt)["fetched_bytes"] - before) / MiB
    allowed = 1.1 * tensor_mib + 8
    bench.add("5 one tensor: MiB fetched", fetched, "MiB", f"allowed {allowed:.0f} (1.1x + 8 MiB)")
    bench.add("5 one tensor: time", one_s, "s", f"{one_s / curl_s:.2f}x whole download (0.1)")
    with bench.mounted(ref, f"{cache}-all") as mnt:

        def every() -> None:
            with safe_open(mnt / MODEL, framework="numpy") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    f.get_tensor(name)

        size = (mnt / MODEL).stat().st_size / MiB
        all_s = timed(every)
    bench.add(
        "5 every tensor, cold",
        size / all_s,
        "MiB/s",
        f"{size / all_s / cold_rate:.2f}x cold sequential (0.7)",
    )


def listing_figures(
    bench: Bench, registry: str, data_digest: str, cache: str, setting: str = ""
) -> None:
    data_s = curl(f"http://{registry}/v2/bench/kit/blobs/{data_digest}")
    ref = f"{registry}/bench/kit:plain"

    def walk() -> int:
        return sum(len(files) for _, _, files in os.walk(mnt / "data"))

    with bench.mounted(ref, cache) as mnt:
        ls_cold = timed(walk)
    with bench.mounted(ref, cache) as mnt:
        ls_cached = timed(walk)
    bench.add(
        f"8 {setting}ls -R of the small files, cold",
        ls_cold,
        "s",
        f"{ls_cold / data_s:.2f}x the layer's download (1.0)",
    )
    bench.add(f"8 {setting}ls -R, index cached, new mount", ls_cached, "s", "(0.5 s)")


def object_link(
    bench: Bench, proxy: LinkProxy, model_digest: str, data_digest: str, tensor_mib: float
) -> None:
    link = proxy.address
    print(f"object-storage link: {link} (30 ms, 50 MB/s per connection, 400 MB/s in all)")
    ref = f"{link}/bench/kit:plain"
    curl_s = curl(f"http://{link}/v2/bench/kit/blobs/{model_digest}")
    with bench.mounted(ref, "link-cold") as mnt:
        size = (mnt / MODEL).stat().st_size / MiB
        cpu = CpuUse(
            {
                "registry": registry_pid(bench),
                "link proxy": proxy.process.pid,
                "daemon": daemon_pid(mnt),
                "reader": os.getpid(),
            }
        )
        cold_s = timed(lambda: read_all(mnt / MODEL))
        cold_cpu = cpu.stop(size, settle="daemon")
    rate = size / cold_s
    bench.add("link: curl, one stream", size / curl_s, "MiB/s")
    bench.add(
        "2 link: cold sequential read",
        rate,
        "MiB/s",
        f"{rate * MiB / 400e6:.2f}x the 400 MB/s cap (0.8), {curl_s / cold_s:.1f}x curl (6);"
        f" {cold_cpu}",
    )
    with bench.mounted(ref, "link-ttfb") as mnt:
        ttfb = timed(lambda: read_head(mnt / MODEL))
    bench.add("6 link: time to first byte", ttfb * 1000, "ms", "(150 ms)")
    safetensors_figures(bench, ref, "link-st", curl_s, rate, tensor_mib)
    listing_figures(bench, link, data_digest, "link-ls", "link: ")


def pull(url: str, path: Path) -> None:
    """Download ``url`` to ``path`` as ``kit pull`` does: following redirects, hashed as it
    streams to disk (OpenSSL's SHA-256 uses SHA-NI, as Go's does)."""
    subprocess.run(
        f"curl -sfL '{url}' | tee '{path}' | openssl dgst -sha256 >/dev/null",
        shell=True, check=True,
    )  # fmt: skip


def production_like(
    bench: Bench, registry: str, nginx_pid: int, model_digest: str, tensor_mib: float
) -> None:
    print(f"production-like: the registry at {registry} redirects blob GETs to nginx", flush=True)
    ref = f"{registry}/bench/kit:plain"
    url = f"http://{registry}/v2/bench/kit/blobs/{model_digest}"
    curl(url, follow=True)  # the blob in nginx's page cache, as a CDN's edge holds it
    cpu = CpuUse({"nginx": nginx_pid, "curl": None})
    curl_s = curl(url, follow=True)
    pulled = bench.base / "pulled.blob"
    pull_s = timed(lambda: pull(url, pulled))
    pulled.unlink()
    with bench.mounted(ref, "prod") as mnt:
        size = (mnt / MODEL).stat().st_size / MiB
        bench.add("prod: curl -L of the model blob", size / curl_s, "MiB/s", cpu.stop(size))
        bench.add(
            "prod: downloading first, as kit pull does",
            size / pull_s,
            "MiB/s",
            "curl -L | tee FILE | openssl dgst -sha256",
        )
        processes = {"registry": registry_pid(bench, "stored"), "nginx": nginx_pid}
        cpu = CpuUse({**processes, "daemon": daemon_pid(mnt), "reader": os.getpid()})
        growth = PageCacheGrowth()
        cold_s = timed(lambda: read_all(mnt / MODEL))
        cold_growth = growth.per_byte(size * MiB)
        cold_cpu = cpu.stop(size, settle="daemon")
    bench.add(
        "1 prod: cold sequential read",
        size / cold_s,
        "MiB/s",
        f"{pull_s / cold_s:.2f}x downloading first (0.8), {curl_s / cold_s:.2f}x curl -L; "
        f"{cold_cpu} (daemon 1.5)",
    )
    bench.add("4 prod: page cache growth per byte, cold", cold_growth, "x", "(1.15)")
    evict_from_page_cache(bench.base / "prod")
    with bench.mounted(ref, "prod") as mnt:
        cpu = CpuUse({"daemon": daemon_pid(mnt), "reader": os.getpid()})
        growth = PageCacheGrowth()
        warm_s = timed(lambda: read_all(mnt / MODEL))
        warm_cpu, warm_growth = cpu.stop(size), growth.per_byte(size * MiB)
    bench.add(
        "3 prod: warm read, new mount",
        size / warm_s,
        "MiB/s",
        f"{curl_s / warm_s:.2f}x curl -L; {warm_cpu} (daemon 0.5)",
    )
    bench.add("4 prod: page cache growth per byte, warm", warm_growth, "x", "(1.15)")
    safetensors_figures(bench, ref, "prod-st", curl_s, size / cold_s, tensor_mib)


def service_figures(bench: Bench, registry: str, base: Path, kits: int = 50) -> None:
    """``serve``: the first access to a kit under the root (a tag resolved, the kit loaded,
    its folder listed), and the daemon's memory with 1 and ``kits`` kits of 300 files loaded."""
    source = base / "service-kit"
    for i in range(300):
        path = source / "data" / f"part{i % 10}" / f"item{i:03d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(500))
    (source / "weights.bin").write_bytes(os.urandom(MiB))
    kit = build_modelkit(
        source,
        {
            "manifestVersion": "1.0.0",
            "model": {"path": "weights.bin"},
            "datasets": [{"path": "data"}],
        },
    )
    for n in range(kits):
        push(registry, f"service/kit{n}", "v1", kit)
    (base / "service").mkdir()
    service = Service(base / "service", base / "service-cache")
    root = service.root
    try:
        pid = service.pid
        idle = rss_mib(pid)
        first = timed(lambda: os.listdir(root / registry / "service" / "kit0:v1"))
        walk(root / registry / "service" / "kit0:v1")
        one = rss_mib(pid)
        for n in range(1, kits):
            walk(root / registry / "service" / f"kit{n}:v1")
        many = rss_mib(pid)
    finally:
        service.stop()
    bench.add("serve: first access to a kit", first * 1000, "ms", "tag, manifest, config, listing")
    bench.add("serve: RSS, 1 kit loaded", one, "MiB", f"{idle:.0f} MiB before any")
    bench.add(
        f"serve: RSS, {kits} kits loaded",
        many,
        "MiB",
        f"{(many - one) / (kits - 1):.2f} MiB a kit (2)",
    )


def walk(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
