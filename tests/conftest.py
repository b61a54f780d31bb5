"""Shared fixtures: a real registry (CNCF Distribution) on loopback, a counting proxy in front
of it, test ModelKits built in kit's exact format, and real FUSE mounts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelkitfs import MountOptions, mount
from tests.kitbuilder import Artifact, push
from tests.registry_proxy import CountingProxy

REGISTRY_BINARY = shutil.which("docker-registry") or shutil.which("registry")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Distribution registry on a free loopback port; yields ``host:port``."""
    if REGISTRY_BINARY is None:
        pytest.fail("docker-registry is not installed: run scripts/test, which installs it")
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(json.dumps({
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)],
                               stdout=subprocess.DEVNULL, stderr=open(root / "log", "wb"))
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{address}/v2/", timeout=1).status_code == 200:
                break
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"registry did not start: {(root / 'log').read_text()}")
        time.sleep(0.1)
    yield address
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def proxy(registry: str) -> Iterator[CountingProxy]:
    counting = CountingProxy(registry)
    yield counting
    counting.close()


@pytest.fixture(scope="session")
def publish(registry: str):
    """Push an artifact to the real registry; returns the reference through the proxy."""

    def publish_(artifact: Artifact, repository: str, tag: str = "latest") -> str:
        push(registry, repository, tag, artifact)
        return f"{repository}:{tag}"

    return publish_


class Mounts:
    """Mounts made by one test, all unmounted at its end (lazily, so a failed test cannot wedge
    the next)."""

    def __init__(self, base: Path, proxy: CountingProxy) -> None:
        self.base = base
        self.proxy = proxy
        self.cache_dir = base / "cache"
        self.mounted: list[Path] = []

    def mount(self, repo_tag: str, *, cache_dir: Path | None = None, name: str | None = None,
              registry: str | None = None) -> Path:
        mountpoint = self.base / (name or f"mnt{len(self.mounted)}")
        mountpoint.mkdir()
        options = MountOptions(plain_http=True, cache_dir=str(cache_dir or self.cache_dir),
                               log_level="debug")
        mount(f"{registry or self.proxy.address}/{repo_tag}", mountpoint, options)
        self.mounted.append(mountpoint)
        return mountpoint

    def unmount_all(self) -> None:
        for mountpoint in self.mounted:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


@pytest.fixture
def mounts(tmp_path: Path, proxy: CountingProxy) -> Iterator[Mounts]:
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: FUSE tests need it")
    handle = Mounts(tmp_path, proxy)
    yield handle
    handle.unmount_all()
