"""Faults that break HTTP itself, from the scripted raw-socket server: stalls, resets, bad
status lines, over-long and too many headers, chunked and lying 206s, servers that ignore
Range, endless bodies, object storage that vanishes, a token service that blips.

Each test reads twice through one mount: during the fault (the right bytes, or EIO from a
daemon that lives on), then after it clears (the right bytes). A wrong byte served is the worst
bug this product can have, so every read is compared with the source. How long a failing read
takes is the benchmark's to measure, not a test's to bound.
"""

from __future__ import annotations

import errno
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MiB, Mounts, one_file_kit
from tests.support.fault_server import FaultServer

SIZE = 12 * MiB + 321
TIMEOUT = 4


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, publish) -> tuple[str, bytes]:
    data, artifact = one_file_kit(tmp_path_factory.mktemp("scripted"), SIZE, 18)
    return publish(artifact, "scripted/kit"), data


@pytest.fixture(scope="module")
def server(registry: str) -> Iterator[FaultServer]:
    handle = FaultServer(registry)
    yield handle
    handle.close()


@pytest.fixture
def faults(server: FaultServer) -> Iterator[FaultServer]:
    server.heal()
    server.set(redirect=False, auth=False, token_lifetime=3600.0)
    server.storage(True)
    server.reset()
    yield server
    server.heal()
    server.storage(True)


def mount(mounts: Mounts, kit: tuple[str, bytes], faults: FaultServer, **options) -> Path:
    return mounts.mount(kit[0], registry=faults.address, timeout=TIMEOUT, **options)


def read_or_eio(path: Path) -> bytes | OSError:
    """The file's bytes, or the EIO it failed with: the daemon's answer (a daemon that died
    would fail the read with ENOTCONN)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        assert exc.errno == errno.EIO, exc
        return exc


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("stall_headers", {"seconds": 60}),
        ("stall_body", {"seconds": 60}),
        ("trickle", {"rate": 4}),
        ("reset", {}),
        ("bad_status", {}),
        ("long_header", {}),
        ("many_headers", {}),
        ("chunked", {}),
        ("no_content_range", {}),
        ("wrong_content_range", {}),
        ("longer", {}),
        ("ignore_range", {}),
        ("endless", {"status": 500}),
        ("status", {"status": 503}),
    ],
)
def test_a_broken_answer_costs_a_retry_never_a_failed_read_or_a_wrong_byte(
    kit: tuple[str, bytes], faults: FaultServer, mounts: Mounts, kind: str, params: dict
) -> None:
    mountpoint = mount(mounts, kit, faults)
    faults.script(kind, count=2, **params)
    assert read_or_eio(mountpoint / "weights.bin") == kit[1]
    assert faults.count(f"fault:{kind}") == 2
    # The connections the faults touched were dropped, not reused: every later request of the
    # same threads succeeds (a stalled getresponse() used to poison its thread for good).
    faults.heal()
    faults.reset()
    assert (mountpoint / "weights.bin").read_bytes() == kit[1]
    mounts.mount(kit[0], registry=faults.address, cache_dir=mounts.base / "fresh", name="again")
    assert (mounts.base / "again" / "weights.bin").read_bytes() == kit[1]
    assert faults.count("blob_requests") >= 1


def test_a_fault_that_lasts_fails_within_the_timeout_then_the_same_mount_recovers(
    kit: tuple[str, bytes], faults: FaultServer, mounts: Mounts
) -> None:
    mountpoint = mount(mounts, kit, faults)
    faults.script("stall_headers", count=10_000, seconds=3600)
    outcome = read_or_eio(mountpoint / "weights.bin")
    assert isinstance(outcome, OSError)
    assert "sent no answer" in mounts.log or "no data within" in mounts.log
    faults.heal()
    assert (mountpoint / "weights.bin").read_bytes() == kit[1]


def test_a_trickle_is_abandoned_at_its_deadline_and_resumed(
    kit: tuple[str, bytes], faults: FaultServer, mounts: Mounts
) -> None:
    """At 4 bytes a second one block takes days; the transfer is cut at its share of
    --timeout, and what arrived is kept."""
    mountpoint = mount(mounts, kit, faults)
    faults.script("trickle", count=10_000, rate=4)
    assert isinstance(read_or_eio(mountpoint / "weights.bin"), OSError)
    faults.heal()
    assert (mountpoint / "weights.bin").read_bytes() == kit[1]


def test_endless_redirect_bodies_are_not_read(
    kit: tuple[str, bytes], faults: FaultServer, mounts: Mounts
) -> None:
    faults.set(redirect=True)
    mountpoint = mount(mounts, kit, faults)
    faults.script("endless_redirect", count=2)
    assert read_or_eio(mountpoint / "weights.bin") == kit[1]
    assert faults.count("fault:endless_redirect") == 2
    faults.heal()
    assert (mountpoint / "weights.bin").read_bytes() == kit[1]


@pytest.mark.parametrize(
    ("kind", "params"),
    [("reset", {}), ("stall_headers", {"seconds": 60}), ("status", {"status": 503})],
)
def test_object_storage_faults_are_retried(
    kit: tuple[str, bytes], faults: FaultServer, mounts: Mounts, kind: str, params: dict
) -> None:
    faults.set(redirect=True)
    mountpoint = mount(mounts, kit, faults)
    faults.script(kind, count=3, target="storage", **params)
    assert read_or_eio(mountpoint / "weights.bin") == kit[1]
    assert faults.count(f"fault:{kind}") == 3
    faults.heal()
    assert (mountpoint / "weights.bin").read_bytes() == kit[1]


def test_object_storage_that_vanishes_is_asked_again_once_back(
    tmp_path: Path, publish, faults: FaultServer, mounts: Mounts
) -> None:
    """A cached redirect whose host refuses connections is dropped after a retry and resolved
    again through the registry; reads fail with EIO while the store is gone, then the same
    mount reads again."""
    data, artifact = one_file_kit(tmp_path / "src", 64 * MiB, 3)
    reference = publish(artifact, "scripted/vanishing")
    faults.set(redirect=True)
    mountpoint = mounts.mount(reference, registry=faults.address, timeout=TIMEOUT)
    with open(mountpoint / "weights.bin", "rb", buffering=0) as f:
        assert f.read(MiB) == data[:MiB]  # the blob's redirect is cached now
        redirects = faults.count("redirects")
        faults.storage(False)
        f.seek(48 * MiB)
        with pytest.raises(OSError) as failure:
            f.read(MiB)
        assert failure.value.errno == errno.EIO
        assert faults.count("redirects") > redirects  # the registry was asked again
        faults.storage(True)
        f.seek(48 * MiB)
        assert f.read() == data[48 * MiB :]
    assert (mountpoint / "weights.bin").read_bytes() == data


@pytest.mark.parametrize(("kind", "params"), [("status", {"status": 503}), ("reset", {})])
def test_token_service_blips_are_retried(
    kit: tuple[str, bytes], faults: FaultServer, mounts: Mounts, kind: str, params: dict
) -> None:
    faults.set(auth=True)
    faults.script(kind, count=2, target="token", **params)
    mountpoint = mount(mounts, kit, faults)  # the manifest needs a token: it rides the blips
    assert read_or_eio(mountpoint / "weights.bin") == kit[1]
    assert faults.count(f"fault:{kind}") == 2
    # One token per scope, however many readers: the blob's parallel ranges shared it.
    assert faults.count("token_requests") == 3
    faults.heal()
    assert (mountpoint / "weights.bin").read_bytes() == kit[1]


def test_a_transient_fault_under_mmap_is_no_sigbus(
    kit: tuple[str, bytes], faults: FaultServer, mounts: Mounts
) -> None:
    """A read that fails under mmap is a SIGBUS that kills the loader: a fault a retry can
    ride out must never get that far."""
    mountpoint = mount(mounts, kit, faults)
    faults.script("stall_headers", count=2, seconds=60)
    faults.script("reset", count=2)
    program = (
        "import hashlib, sys, numpy; "
        "m = numpy.memmap(sys.argv[1], dtype=numpy.uint8, mode='r'); "
        "print(hashlib.sha256(m).hexdigest())"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, str(mountpoint / "weights.bin")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr  # -7 would be SIGBUS
    assert done.stdout.strip() == hashlib.sha256(kit[1]).hexdigest()
    assert faults.count("fault:stall_headers") == 2 and faults.count("fault:reset") == 2
