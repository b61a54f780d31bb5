"""Demo: a loopback registry, a sample ModelKit pushed to it, mounted lazily, read, measured."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelkitfs import MountOptions, mount, unmount
from tests.support.kitbuilder import build_modelkit, push
from tests.support.registry_server import running_registry

MiB = 1024 * 1024
KITFILE = {
    "manifestVersion": "1.0.0",
    "package": {"name": "sample", "version": "1.0.0", "authors": ["modelkitfs"]},
    "model": {"name": "sample-model", "path": "model", "framework": "none"},
    "code": [{"path": "src"}],
    "datasets": [{"name": "train", "path": "data/train.csv"}],
    "docs": [{"path": "README.md"}],
}


def make_sample(root: Path) -> None:
    (root / "model").mkdir(parents=True)
    (root / "model/weights.bin").write_bytes(os.urandom(128 * MiB))
    (root / "model/config.json").write_text('{"hidden": 4096}\n')
    (root / "src").mkdir()
    (root / "src/train.py").write_text("print('training')\n")
    (root / "data").mkdir()
    (root / "data/train.csv").write_text("x,y\n" + "".join(f"{i},{2 * i}\n" for i in range(1000)))
    (root / "README.md").write_text("# Sample ModelKit\n")


def stats(mountpoint: Path) -> dict:
    return json.loads(os.getxattr(mountpoint, "user.modelkitfs.stats"))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="modelkitfs-demo-") as temp:
        base = Path(temp)
        (base / "registry").mkdir()
        with running_registry(base / "registry") as registry:
            print(f"registry    : CNCF Distribution at {registry}")
            make_sample(base / "sample")
            artifact = build_modelkit(base / "sample", KITFILE)
            push(registry, "demo/sample", "v1", artifact)
            reference = f"{registry}/demo/sample:v1"
            print(
                f"pushed      : {reference}  ({artifact.layer_bytes / MiB:.1f} MiB in "
                f"{len(artifact.blobs) - 1} layers)"
            )
            mountpoint = base / "mnt"
            mountpoint.mkdir()
            options = MountOptions(plain_http=True, cache_dir=str(base / "cache"))
            started = time.perf_counter()
            mount(reference, mountpoint, options)
            print(
                f"mounted     : {mountpoint} in {time.perf_counter() - started:.2f}s, "
                f"{stats(mountpoint)['fetched_bytes']} bytes fetched (the config)"
            )
            try:
                print("tree        :")
                for directory, dirs, files in sorted(os.walk(mountpoint)):
                    for name in sorted(dirs + files):
                        path = Path(directory, name)
                        rel = path.relative_to(mountpoint)
                        size = "" if path.is_dir() else f"{path.stat().st_size:>12,}"
                        print(f"  {oct(path.stat().st_mode & 0o777)[2:]} {size:>12} {rel}")
                print("Kitfile     :")
                print("  " + (mountpoint / "Kitfile").read_text().replace("\n", "\n  ").rstrip())
                started = time.perf_counter()
                with open(mountpoint / "model/weights.bin", "rb") as f:
                    first = f.read(4096)
                print(
                    f"first byte  : 4 KiB of model/weights.bin in "
                    f"{(time.perf_counter() - started) * 1000:.1f} ms"
                )
                with open(mountpoint / "model/weights.bin", "rb") as f:
                    chunk = os.pread(f.fileno(), MiB, 64 * MiB)
                original = (base / "sample/model/weights.bin").read_bytes()
                assert first == original[:4096] and chunk == original[64 * MiB : 65 * MiB]
                print("read        : 1 MiB from the middle of the 128 MiB weights (bytes verified)")
                fetched = stats(mountpoint)["fetched_bytes"]
                print(
                    f"fetched     : {fetched / MiB:.2f} MiB of a {artifact.layer_bytes / MiB:.1f}"
                    f" MiB kit ({100 * fetched / artifact.layer_bytes:.1f} %)"
                )
            finally:
                unmount(mountpoint)
            print("unmounted   : done")


if __name__ == "__main__":
    main()
