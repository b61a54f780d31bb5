"""Shared fixtures: a real registry (CNCF Distribution) on loopback, a counting proxy in front
of it, test ModelKits built in kit's exact format, and real FUSE mounts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelkitfs import MountOptions, mount
from tests.kitbuilder import Artifact, push
from tests.registry_proxy import CountingProxy
from tests.registry_server import running_registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Distribution registry on a free loopback port; yields ``host:port``."""
    with running_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


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

    def mount(
        self,
        repo_tag: str,
        *,
        cache_dir: Path | None = None,
        name: str | None = None,
        registry: str | None = None,
    ) -> Path:
        mountpoint = self.base / (name or f"mnt{len(self.mounted)}")
        mountpoint.mkdir()
        options = MountOptions(
            plain_http=True, cache_dir=str(cache_dir or self.cache_dir), log_level="debug"
        )
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
