"""``modelkitfs serve ROOT``: one daemon and one FUSE mount for every kit, each reference a
folder loaded on first access. Real registries, real FUSE, requests counted at the proxy."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelkitfs.errors import MountError
from modelkitfs.fuse.namespace import NAMES_KEPT
from modelkitfs.mount import unmount
from tests.conftest import (
    NESTED_KITFILE,
    ONE_FILE_KITFILE,
    MiB,
    assert_same_tree,
    daemon_pid,
    mount_stats,
    one_file_kit,
    running,
    write,
)
from tests.support.clirun import run_cli
from tests.support.kitbuilder import build_modelkit, expected_tree, push, store_locally
from tests.support.registry_proxy import CountingProxy
from tests.support.waiting import wait_for

SIZE = 24 * MiB + 7
UNLOADED = "modelkitfs.fuse.service: unloaded"


class Service:
    """``modelkitfs serve ROOT`` of one test, in the background as a user starts it, on a
    root under the test's folder."""

    def __init__(self, base: Path, cache_dir: Path, **settings: object) -> None:
        self.root = base / "kits"
        self.root.mkdir()
        self.cache_dir = cache_dir
        flags = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
        started = run_cli(
            "serve", str(self.root), "--plain-http", "--timeout=10", "--log-level=debug",
            *flags, cache=cache_dir,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        self.pid = daemon_pid(self.root)

    @property
    def log(self) -> str:
        return (self.cache_dir / "logs" / "modelkitfs.log").read_text()

    def stop(self) -> None:
        """Unmount (lazily, so that a failed test cannot wedge the next) and wait for the
        daemon to end."""
        subprocess.run(["fusermount3", "-u", "-z", str(self.root)], capture_output=True)
        wait_for(lambda: not running(self.pid), "the service stopped")


@pytest.fixture
def service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    settings = getattr(request, "param", {})
    handle = Service(tmp_path, tmp_path / "cache", **settings)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, registry: str) -> tuple[str, bytes, str]:
    """A one-file kit pushed to the registry: (repository:tag, the file's bytes, its digest)."""
    data, artifact = one_file_kit(tmp_path_factory.mktemp("serve"), SIZE, 31)
    push(registry, "serve/weights", "v1", artifact)
    return "serve/weights:v1", data, artifact.digest


def test_any_reference_is_a_folder_identical_to_its_mount(
    nested_source: Path,
    registry: str,
    proxy: CountingProxy,
    service: Service,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kits from two registries (the registry itself and the proxy in front of it are two
    addresses) through one root, each tree as ``kit unpack`` writes it."""
    kit = build_modelkit(nested_source, NESTED_KITFILE)
    push(registry, "serve/nested", "v1", kit)
    expected = expected_tree(nested_source, NESTED_KITFILE)
    for address in (registry, proxy.address):
        folder = service.root / address / "serve" / f"nested@{kit.digest}"
        assert_same_tree(folder, nested_source, expected)
        tag = service.root / address / "serve" / "nested:v1"
        assert os.readlink(tag) == f"nested@{kit.digest}"
        assert_same_tree(tag, nested_source, expected)
    # Folders list what was loaded under them, and nothing else.
    assert sorted(os.listdir(service.root)) == sorted([registry, proxy.address])
    assert sorted(os.listdir(service.root / registry / "serve")) == sorted(
        ["nested:v1", f"nested@{kit.digest}"]
    )


def test_a_kit_in_kit_local_storage_is_a_folder_too(
    nested_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "kitops"
    monkeypatch.setenv("KITOPS_HOME", str(home))
    kit = build_modelkit(nested_source, NESTED_KITFILE)
    store_locally(home, "localhost", "nested", "v1", kit)
    # Started after KITOPS_HOME is set; the node's own files only where the operator says.
    service = Service(tmp_path, tmp_path / "cache", allow_local=home / "storage")
    try:
        assert os.readlink(service.root / "nested:v1") == f"nested@{kit.digest}"
        assert_same_tree(
            service.root / "nested:v1", nested_source, expected_tree(nested_source, NESTED_KITFILE)
        )
    finally:
        service.stop()


def test_eight_readers_of_a_new_kit_cost_one_download(
    weights: tuple[str, bytes, str], proxy: CountingProxy, service: Service
) -> None:
    repo_tag, data, _ = weights
    path = service.root / proxy.address / repo_tag / "weights.bin"  # through the tag's symlink
    proxy.reset()
    results: list[bytes] = []
    start = threading.Barrier(8)

    def read() -> None:
        start.wait()
        results.append(path.read_bytes())

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 8 and all(result == data for result in results)
    assert proxy.manifest_requests == 1
    assert SIZE <= proxy.blob_bytes <= SIZE + 2 * MiB  # the layer once, and the config


@pytest.mark.parametrize("service", [{"tag_ttl": 1.0}], indirect=True)
def test_a_moved_tag_points_new_lookups_at_the_new_kit(
    tmp_path: Path, registry: str, proxy: CountingProxy, service: Service
) -> None:
    versions = []
    for n in range(2):
        directory = tmp_path / f"v{n}"
        write(directory / "weights.bin", bytes([n]) * (2 * MiB))
        versions.append(build_modelkit(directory, ONE_FILE_KITFILE))
    push(registry, "serve/moving", "stable", versions[0])
    tag = service.root / proxy.address / "serve" / "moving:stable"
    assert os.readlink(tag) == f"moving@{versions[0].digest}"
    with open(tag / "weights.bin", "rb") as opened:
        push(registry, "serve/moving", "stable", versions[1])
        wait_for(
            lambda: os.readlink(tag) == f"moving@{versions[1].digest}", "the tag was re-resolved"
        )
        assert (tag / "weights.bin").read_bytes() == bytes([1]) * (2 * MiB)
        assert opened.read() == bytes([0]) * (2 * MiB)  # an open file keeps its kit


@pytest.mark.parametrize("service", [{"negative_ttl": 600.0}], indirect=True)
def test_missing_references_and_impossible_names_cost_at_most_one_request(
    proxy: CountingProxy, service: Service
) -> None:
    folder = service.root / proxy.address / "serve"
    proxy.reset()
    for _ in range(1000):
        with pytest.raises(FileNotFoundError):
            os.stat(folder / "nothing:here")
    assert proxy.manifest_requests <= 2
    said = [line for line in service.log.splitlines() if "nothing:here" in line]
    assert len(said) == 1 and "not found" in said[0]  # said once, not a thousand times
    proxy.reset()
    upper = f"weights@sha256:{'A' * 64}"  # a registry would answer 500s for a while
    for name in (".git", "__pycache__", "HEAD~1", "a..b", "x@y", "UPPER", upper):
        for _ in range(100):
            with pytest.raises(FileNotFoundError):
                os.stat(folder / name)
    assert proxy.counters == {k: 0 for k in proxy.counters}


@pytest.mark.parametrize("service", [{"tag_ttl": 0.5, "timeout": 2.0}], indirect=True)
def test_a_tag_is_served_from_its_last_digest_while_its_registry_fails(
    weights: tuple[str, bytes, str], faulty: CountingProxy, service: Service
) -> None:
    repo_tag, data, digest = weights
    tag = service.root / faulty.address / repo_tag
    with open(tag / "weights.bin", "rb") as f:
        assert f.read(MiB) == data[:MiB]
    faulty.inject("status", count=1000, target="manifest")  # blobs still come
    warning = "serving the kit it named last"
    wait_for(
        lambda: os.readlink(tag) == f"weights@{digest}" and warning in service.log,
        "the tag was resolved during the outage",
    )
    assert (tag / "weights.bin").read_bytes() == data
    assert service.log.count(warning) == 1


@pytest.mark.parametrize("service", [{"idle": 0.5}], indirect=True)
def test_an_idle_kit_is_unloaded_and_loaded_again_but_never_while_open(
    weights: tuple[str, bytes, str],
    tmp_path: Path,
    registry: str,
    proxy: CountingProxy,
    service: Service,
) -> None:
    _, data, digest = weights
    write(tmp_path / "other" / "weights.bin", b"other")
    other = build_modelkit(tmp_path / "other", ONE_FILE_KITFILE)
    push(registry, "serve/other", "v1", other)
    folder = service.root / proxy.address / "serve"
    held = folder / f"weights@{digest}"
    with open(held / "weights.bin", "rb") as f:
        assert f.read(MiB) == data[:MiB]
        assert (folder / f"other@{other.digest}" / "weights.bin").read_bytes() == b"other"
        wait_for(lambda: f"{UNLOADED} {proxy.address}/serve/other@" in service.log, "unloaded")
        assert f"{UNLOADED} {proxy.address}/serve/weights@" not in service.log  # held open
        assert f.read(MiB) == data[MiB : 2 * MiB]
    wait_for(lambda: f"{UNLOADED} {proxy.address}/serve/weights@" in service.log, "unloaded")
    assert (held / "weights.bin").read_bytes() == data  # loaded again on its next lookup
    assert service.log.count(f"loads: loaded {proxy.address}/serve/weights@") == 2


def test_unmounting_the_root_with_files_open_is_as_for_a_mount(
    weights: tuple[str, bytes, str], proxy: CountingProxy, service: Service
) -> None:
    _, data, digest = weights
    path = service.root / proxy.address / "serve" / f"weights@{digest}" / "weights.bin"
    with open(path, "rb") as f:
        assert f.read(MiB) == data[:MiB]
        with pytest.raises(MountError, match=f"is busy: pid {os.getpid()} "):
            unmount(service.root)
        unmount(service.root, lazy=True)  # detached: the open file reads on
        assert f.read() == data[MiB:]
    wait_for(lambda: not running(service.pid), "the daemon stopped once the file was closed")
    assert "stopped serving" in service.log
    assert not os.path.ismount(service.root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples at ``/metrics``: value by name and labels."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


METRICS_PORT = free_port()


@pytest.mark.parametrize("service", [{"metrics": f"127.0.0.1:{METRICS_PORT}"}], indirect=True)
def test_metrics_move_by_what_the_proxy_counted(
    weights: tuple[str, bytes, str], proxy: CountingProxy, service: Service
) -> None:
    _, data, digest = weights
    before = scrape(METRICS_PORT)
    assert sample(before, "modelkitfs_kits_loaded") == 0
    proxy.reset()
    path = service.root / proxy.address / "serve" / f"weights@{digest}" / "weights.bin"
    assert path.read_bytes() == data
    registry = {"registry": proxy.address}

    def counted() -> bool:  # a transfer is counted once its thread is done, after the read
        now = scrape(METRICS_PORT)
        return sample(now, "modelkitfs_registry_blob_bytes_total", **registry) == (
            proxy.blob_bytes
        ) and sample(now, "modelkitfs_registry_requests_total", **registry) == (
            proxy.blob_requests + proxy.manifest_requests
        )

    wait_for(counted, "the daemon counts what the proxy counted")
    after = scrape(METRICS_PORT)
    assert sample(after, "modelkitfs_registry_blob_bytes_total", **registry) == proxy.blob_bytes
    assert sample(after, "modelkitfs_registry_requests_total", **registry) == (
        proxy.blob_requests + proxy.manifest_requests
    )
    answered = sum(
        value for (name, labels), value in after.items()
        if name == "modelkitfs_registry_responses_total" and ("registry", proxy.address) in labels
    )  # fmt: skip
    assert answered == proxy.blob_requests + proxy.manifest_requests  # every answer, by status
    assert sample(after, "modelkitfs_registry_responses_total", **registry, status="206") >= 1
    timed = sample(after, "modelkitfs_registry_request_seconds_count", **registry)
    assert timed == answered
    assert sample(after, "modelkitfs_cache_evictions_total") == 0  # no cap reached
    store = {**registry, "repository": "serve/weights"}
    network = sample(after, "modelkitfs_cache_blocks_total", **store, level="network")
    assert network == -(-SIZE // MiB)  # every block of the layer once (1 MiB blocks)
    assert sample(after, "modelkitfs_kits_loaded") == 1
    reads = sample(after, "modelkitfs_fuse_operation_seconds_count", operation="read")
    assert reads >= SIZE // MiB  # the kernel asks for at most 1 MiB a read
    with pytest.raises(FileNotFoundError):
        os.stat(path.parent / "missing")
    errors = [key for key in scrape(METRICS_PORT) if key[0] == "modelkitfs_fuse_errors_total"]
    assert errors == []  # a lookup that finds nothing is no error


@pytest.mark.parametrize("service", [{"idle": 0.5}], indirect=True)
def test_a_bind_mount_of_a_kit_reads_on_after_the_kit_was_unloaded(
    weights: tuple[str, bytes, str], proxy: CountingProxy, service: Service, tmp_path: Path
) -> None:
    """As the CSI driver binds a kit's folder into a pod: the kernel holds the folder's inode
    for as long as the bind mount lives, however long the kit stays unloaded."""
    _, data, digest = weights
    folder = service.root / proxy.address / "serve" / f"weights@{digest}"
    target = tmp_path / "pod-volume"
    target.mkdir()
    subprocess.run(["mount", "--bind", str(folder), str(target)], check=True)
    try:
        assert (target / "weights.bin").read_bytes()[:MiB] == data[:MiB]
        wait_for(lambda: UNLOADED in service.log, "the idle kit was unloaded")
        assert (target / "weights.bin").read_bytes() == data
        assert sorted(os.listdir(target)) == ["Kitfile", "weights.bin"]
        assert f"{digest} again" in service.log  # loaded again, under the same inodes
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_mounts_lists_the_service_and_its_kits_and_umount_stops_it(
    weights: tuple[str, bytes, str], proxy: CountingProxy, service: Service
) -> None:
    repo_tag, data, digest = weights
    assert (service.root / proxy.address / repo_tag / "weights.bin").read_bytes() == data
    listed = run_cli("mounts", "--json", cache=service.cache_dir)
    assert listed.returncode == 0, listed.stderr
    entry = next(m for m in json.loads(listed.stdout) if m["mountpoint"] == str(service.root))
    assert entry["reference"] == "serve" and entry["pid"] == service.pid
    assert entry["kits"] == [f"{proxy.address}/serve/weights@{digest}"]
    rows = run_cli("mounts", cache=service.cache_dir).stdout.splitlines()
    row = next(line for line in rows if line.startswith(f"{service.root} "))
    assert row.split()[1:4] == ["every", "kit", "(1"]
    stopped = run_cli("umount", str(service.root), cache=service.cache_dir)
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: not running(service.pid), "the service stopped")
    assert not os.path.ismount(service.root)


@pytest.mark.parametrize("service", [{"idle": 0.5, "timeout": 2.0}], indirect=True)
def test_a_kit_that_cannot_be_loaded_again_fails_alone_and_the_mount_serves_on(
    tmp_path: Path,
    registry: str,
    weights: tuple[str, bytes, str],
    faulty: CountingProxy,
    service: Service,
) -> None:
    """Unloaded, a kit is built again on the next request for a file the kernel still knows,
    its layers indexed again; its docs layer was never indexed (nothing looked at it), and
    now its registry fails every blob request. That request fails; the service, every other
    kit and, once the registry is back, this one read on."""
    data = np.random.default_rng(41).bytes(MiB)
    write(tmp_path / "fragile" / "weights.bin", data)
    write(tmp_path / "fragile" / "docs" / "guide.md", b"guide")
    kitfile = {**ONE_FILE_KITFILE, "docs": [{"path": "docs/guide.md"}]}
    kit = build_modelkit(tmp_path / "fragile", kitfile)
    push(registry, "serve/fragile", "v1", kit)
    file = service.root / faulty.address / "serve" / f"fragile@{kit.digest}" / "weights.bin"
    assert file.read_bytes() == data
    wait_for(lambda: f"{UNLOADED} {faulty.address}/serve/fragile@" in service.log, "unloaded")
    faulty.inject_randomly(["status"], rate=1.0)
    with pytest.raises(OSError) as failed:
        file.read_bytes()
    assert failed.value.errno == errno.EIO
    assert running(service.pid) and os.path.ismount(service.root)
    _, other, digest = weights
    assert (
        service.root / registry / "serve" / f"weights@{digest}" / "weights.bin"
    ).read_bytes() == other
    faulty.heal()

    def reads() -> bool:
        try:
            return file.read_bytes() == data
        except OSError:
            return False  # a load begun during the fault may still be ending

    wait_for(reads, "the kit read again once its registry answered")


def test_names_that_hold_no_kit_are_let_go_of(service: Service) -> None:
    """Any name under the root is a folder (a registry, a repository) until a kit is asked
    for under it, and the kernel keeps what it is answered: beyond the last NAMES_KEPT, the
    service asks it to let go of them, and forgets them."""
    for n in range(NAMES_KEPT + 2000):
        assert (service.root / f"x{n}").is_dir()
    held = lambda: mount_stats(service.root)["names_held"]  # noqa: E731
    wait_for(lambda: held() <= NAMES_KEPT + 1, "the names beyond NAMES_KEPT were let go of")
