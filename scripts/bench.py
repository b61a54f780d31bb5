"""Benchmarks against baselines measured in the same run; prints a table and JSON."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from modelkitfs import MountOptions, mount, unmount
from tests.kitbuilder import build_modelkit, push
from tests.registry_server import running_registry

MiB = 1024 * 1024


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def read_all(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(MiB):
            pass


def read_head(path: Path) -> None:
    with open(path, "rb") as f:
        f.read(4096)


def fetched(mountpoint: Path) -> int:
    return json.loads(os.getxattr(mountpoint, "user.modelkitfs.stats"))["fetched_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of 1 GiB")
    args = parser.parse_args()
    size = (64 if args.quick else 1024) * MiB
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="modelkitfs-bench-") as temp:
        base = Path(temp)
        (base / "registry").mkdir()
        source = base / "src"
        (source / "model").mkdir(parents=True)
        weights = source / "model/weights.bin"
        rng = np.random.default_rng(0)
        with open(weights, "wb") as f:
            # Quantised-looking weights: gzip saves about a third, as it does on real ones.
            for _ in range(size // (64 * MiB) or 1):
                f.write((rng.standard_normal(min(size, 64 * MiB)) * 8).astype(np.int8).tobytes())
        kitfile = {"manifestVersion": "1.0.0", "model": {"name": "bench", "path": "model"}}
        artifact = build_modelkit(source, kitfile)
        gzipped = build_modelkit(source, kitfile, compression="gzip")
        layer = json.loads(artifact.manifest)["layers"][0]["digest"]
        with running_registry(base / "registry") as registry:
            push(registry, "bench/kit", "v1", artifact)
            push(registry, "bench/kit", "gzip", gzipped)
            del gzipped
            ref = f"{registry}/bench/kit:v1"
            url = f"http://{registry}/v2/bench/kit/blobs/{layer}"
            curl = timed(
                lambda: subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)
            )
            local = timed(lambda: read_all(weights))

            def mounted(cache: Path) -> Path:
                mountpoint = Path(tempfile.mkdtemp(dir=base))
                mount(ref, mountpoint, MountOptions(plain_http=True, cache_dir=str(cache)))
                return mountpoint

            cold = mounted(base / "cache")
            ttfb = timed(lambda: read_head(cold / "model/weights.bin"))
            unmount(cold)
            cold = mounted(base / "cache2")
            cold_time = timed(lambda: read_all(cold / "model/weights.bin"))
            reread = timed(lambda: read_all(cold / "model/weights.bin"))
            unmount(cold)
            warm = mounted(base / "cache2")
            warm_time = timed(lambda: read_all(warm / "model/weights.bin"))
            unmount(warm)
            partial = mounted(base / "cache3")
            with open(partial / "model/weights.bin", "rb") as f:
                os.pread(f.fileno(), MiB, size // 2)
            partial_bytes = fetched(partial)
            unmount(partial)

            ref = f"{registry}/bench/kit:gzip"
            gz = mounted(base / "cache4")
            gzip_first = timed(lambda: read_all(gz / "model/weights.bin"))
            unmount(gz)
            gz = mounted(base / "cache4")
            gzip_warm = timed(lambda: read_all(gz / "model/weights.bin"))
            unmount(gz)
    mbps = size / MiB
    results = {
        "file_mib": mbps,
        "curl_mib_s": mbps / curl,
        "cold_mib_s": mbps / cold_time,
        "cold_vs_curl": curl / cold_time,
        "warm_mib_s": mbps / warm_time,
        "warm_vs_local_read": local / warm_time,
        "reread_vs_local_read": local / reread,
        "ttfb_ms": ttfb * 1000,
        "partial_1mib_fetched_mib": partial_bytes / MiB,
        "gzip_first_read_mib_s": mbps / gzip_first,
        "gzip_first_vs_plain_first": cold_time / gzip_first,
        "gzip_reread_mib_s": mbps / gzip_warm,
        "gzip_reread_vs_plain_reread": warm_time / gzip_warm,
    }
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:10.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
