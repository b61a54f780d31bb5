"""Benchmarks, each beside a baseline measured in the same run; prints a table and JSON.

Three settings, as registries serve blobs:

- loopback: the real registry serves the bytes itself (as on-premises registries on a file
  system do); on two cores the registry and the daemon share the CPU.
- object-storage link: a proxy of ours adds 30 ms before each response's first byte, 50 MB/s per
  connection and 400 MB/s in all (tests/support/link_proxy.py).
- production-like: the registry answers blob GETs with a redirect to nginx over its storage
  folder (Distribution's redirect middleware), as Docker Hub, GHCR, ECR and Harbor on S3 send
  them to object storage or a CDN; nginx serves them with sendfile.

Then the node service (``serve``): first access to a kit under its root, and its memory with 1
and 50 kits loaded.

The kit: a safetensors model of 1 GiB shaped like a real checkpoint (a GPT-2-medium-like
transformer in float32: an embedding, then per block the attention and MLP weights, biases and
norms: 220 tensors) and a dataset of 20,000 small files; the same kit gzip-compressed. "One
tensor" is a block's MLP weight (16 MiB), as a loader of one layer reads: with a few equal
tensors, one tensor is so large a share of the blob that no reader could load it in a tenth of
the time ``curl`` takes for the whole. ``--quick`` shrinks everything for a smoke run. No figure
is asserted: machines are shared and noisy; the ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_access import (
    access_figures,
    cold_random,
    image_kit_ref,
    images_blob_url,
    make_images,
    small_files_cold,
)
from bench_figures import loopback, object_link, production_like, service_figures
from bench_tools import MODEL, ONE_TENSOR, Bench, MiB, make_source, process_with, transformer

from tests.support.kitbuilder import build_modelkit, push
from tests.support.link_proxy import LinkProxy
from tests.support.registry_server import running_registry, storage_folder
from tests.support.static_server import running_nginx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a 40 MiB model, 2,000 files, 1,000 images"
    )
    args = parser.parse_args()
    shapes, small_files = (
        (transformer(8192, 256, 10), 2000) if args.quick else (transformer(50257, 1024, 18), 20000)
    )
    image_count, fio_seconds = (1000, 1.0) if args.quick else (20000, 5.0)
    tensor_mib = np.prod(shapes[ONE_TENSOR]) * 4 / MiB
    with tempfile.TemporaryDirectory(prefix="modelkitfs-bench-") as temp:
        base = Path(temp)
        bench = Bench(base)
        source = base / "src"
        source.mkdir()
        print("building the kits", flush=True)
        make_source(source, shapes, small_files)
        kitfile = {
            "manifestVersion": "1.0.0",
            "model": {"name": "bench", "path": MODEL},
            "datasets": [{"name": "small", "path": "data"}],
        }
        plain = build_modelkit(source, kitfile)
        layers = json.loads(plain.manifest)["layers"]
        model_digest, data_digest = layers[0]["digest"], layers[1]["digest"]
        layer_tar = base / "model-layer.tar"
        layer_tar.write_bytes(plain.blobs[model_digest])
        images = base / "images-src"
        make_images(images, image_count)
        image_kit = build_modelkit(
            images, {"manifestVersion": "1.0.0", "datasets": [{"name": "images", "path": "images"}]}
        )
        images_digest = json.loads(image_kit.manifest)["layers"][0]["digest"]
        images_tar = base / "images-layer.tar"
        images_tar.write_bytes(image_kit.blobs[images_digest])
        (base / "registry").mkdir()
        with running_registry(base / "registry") as registry:
            push(registry, "bench/kit", "plain", plain)
            push(registry, "bench/kit", "gzip", build_modelkit(source, kitfile, compression="gzip"))
            push(registry, "bench/images", "plain", image_kit)
            del image_kit
            loopback(bench, registry, source, model_digest, data_digest, layer_tar, tensor_mib)
            access_figures(
                bench, registry, source, layer_tar, images, images_tar, images_digest, fio_seconds
            )
            with LinkProxy(registry) as link:
                object_link(bench, link, model_digest, data_digest, tensor_mib)
                cold_random(bench, f"{link.address}/bench/kit:plain", "link-cold-random", "link: ")
                small_files_cold(
                    bench,
                    image_kit_ref(link.address),
                    images,
                    images_blob_url(link.address, images_digest),
                    "link: ",
                )
        storage = storage_folder(base / "stored")
        storage.mkdir(parents=True)
        with (
            running_nginx(base / "nginx", storage) as nginx,
            running_registry(base / "stored", redirect=f"http://{nginx}") as registry,
        ):
            push(registry, "bench/kit", "plain", plain)
            del plain
            nginx_pid = process_with("nginx: worker")
            production_like(bench, registry, nginx_pid, model_digest, tensor_mib)
            service_figures(bench, registry, base)
        print(json.dumps({name: round(value, 3) for name, value, _, _ in bench.rows}))


if __name__ == "__main__":
    main()
