"""Shared fixtures: a real registry (CNCF Distribution) on loopback, a counting proxy in front
of it, test ModelKits built in kit's exact format, and real FUSE mounts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkitfs import MountOptions, mount
from tests.support.kitbuilder import Artifact, build_modelkit, push
from tests.support.registry_proxy import CountingProxy
from tests.support.registry_server import running_registry

MiB = 1024 * 1024

NESTED_KITFILE = {
    "manifestVersion": "1.0.0",
    "package": {"name": "nested", "version": "1.0.0", "authors": ["Ada"]},
    "model": {
        "name": "llm",
        "path": "main-dir",
        "parts": [{"name": "adapter", "path": "./parts/adapter.bin"}],
    },
    "code": [{"path": "."}],
    "datasets": [{"name": "train", "path": "main-dir/subdir"}, {"name": "fr", "path": "données/"}],
    "docs": [{"path": "./docs/guide.md"}],
    "prompts": [{"name": "system", "path": "prompts/system.txt"}],
}


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


ONE_FILE_KITFILE = {"manifestVersion": "1.0.0", "model": {"path": "weights.bin"}}


def one_file_kit(directory: Path, size: int, seed: int) -> tuple[bytes, Artifact]:
    """A kit whose model is one file, ``weights.bin``, of ``size`` random bytes: the bytes and
    the kit."""
    data = np.random.default_rng(seed).bytes(size)
    write(directory / "weights.bin", data)
    return data, build_modelkit(directory, ONE_FILE_KITFILE)


@pytest.fixture(scope="session")
def nested_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kit's nested layout with every path spelling, modes, long and non-ASCII names."""
    root = tmp_path_factory.mktemp("nested")
    rng = np.random.default_rng(1)
    write(root / "Kitfile", b"ignored by kit\n")
    write(root / ".kitignore", b"")
    write(root / "README.md", b"# nested\n")
    write(root / "main-dir/weights.bin", rng.bytes(3 * MiB + 17))
    write(root / "main-dir/config.json", b'{"a": 1}', 0o600)
    write(root / "main-dir/subdir/train.csv", b"x,y\n1,2\n")
    write(root / "main-dir/subdir/deep/er/still/file.txt", b"deep")
    write(root / "parts/adapter.bin", rng.bytes(70_000))
    write(root / "parts/other.bin", b"code layer carries me")
    write(root / "src/run.py", b"print('hi')\n", 0o755)
    write(root / "src/Kitfile", b"nested Kitfiles are kept")
    write(root / "données/résumé.txt", "été\n".encode())
    write(root / "docs/guide.md", b"guide")
    write(root / "prompts/system.txt", b"You are helpful.")
    write(root / ("l" * 120) / ("n" * 150 + ".txt"), b"long")
    write(root / "empty.txt", b"")
    (root / "main-dir/subdir").chmod(0o750)
    (root / "emptydir").mkdir()
    return root


def assert_same_tree(
    mountpoint: Path, source: Path, expected: set[str], *, kitfile: bool = True
) -> None:
    """The mount holds exactly ``expected`` (plus the Kitfile), each equal to the source."""
    found = set()
    for directory, dirs, files in os.walk(mountpoint):
        for name in dirs + files:
            found.add((Path(directory) / name).relative_to(mountpoint).as_posix())
    assert found == expected | ({"Kitfile"} if kitfile else set())
    for name in expected:
        mounted, original = os.stat(mountpoint / name), os.stat(source / name)
        assert stat.S_IFMT(mounted.st_mode) == stat.S_IFMT(original.st_mode), name
        assert stat.S_IMODE(mounted.st_mode) == stat.S_IMODE(original.st_mode), name
        if stat.S_ISREG(original.st_mode):
            assert mounted.st_size == original.st_size, name
            assert (mountpoint / name).read_bytes() == (source / name).read_bytes(), name


def daemon_pid(mountpoint: Path) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if command.startswith(b"modelkitfs: ") and command.rstrip(b"\0").endswith(
                f" on {mountpoint}".encode()
            ):
                return int(entry.name)
    raise AssertionError(f"no daemon serves {mountpoint}")


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a daemon we started lingers as a zombie once done)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def mount_stats(mountpoint: Path) -> dict[str, Any]:
    """What the daemon serving ``mountpoint`` reports of itself."""
    return json.loads(os.getxattr(mountpoint, "user.modelkitfs.stats"))


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


@pytest.fixture
def faulty(proxy: CountingProxy) -> Iterator[CountingProxy]:
    """The counting proxy, free of faults when the test starts and when it ends."""
    proxy.heal()
    proxy.reset()
    yield proxy
    proxy.heal()


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
        **options: Any,
    ) -> Path:
        """Mount through the counting proxy unless ``registry`` names another address (""
        takes ``repo_tag`` as the whole reference: kit's localhost, oci-layout:...);
        ``options`` are MountOptions fields (filters, labels, TLS, mirrors...)."""
        mountpoint = self.base / (name or f"mnt{len(self.mounted)}")
        mountpoint.mkdir()
        mount_options = MountOptions(
            cache_dir=str(cache_dir or self.cache_dir),
            **{"plain_http": True, "log_level": "debug", **options},
        )
        reference = repo_tag if registry == "" else f"{registry or self.proxy.address}/{repo_tag}"
        mount(reference, mountpoint, mount_options)
        self.mounted.append(mountpoint)
        return mountpoint

    @property
    def log(self) -> str:
        """What the daemons of this test's cache logged."""
        return (self.cache_dir / "logs" / "modelkitfs.log").read_text()

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
