"""A server that ignores ``Range`` (issue 18, case 7): it answers every range request with the
whole blob, so that reading a blob in runs used to move the blob from its start once per run
(a 10 GiB blob read in 16 MiB runs: terabytes). Now the blob is streamed once into the cache,
blocks landing as they arrive; the bytes are counted at the (scripted) server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MiB, Mounts, one_file_kit
from tests.support.fault_server import FaultServer

SIZE = 48 * MiB + 123
ALWAYS = 10_000  # faults: every request of the test


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, publish) -> tuple[str, bytes, int]:
    """(reference, the file's bytes, the size of its layer blob)."""
    data, artifact = one_file_kit(tmp_path_factory.mktemp("whole"), SIZE, 7)
    layer = json.loads(artifact.manifest)["layers"][0]["size"]
    return publish(artifact, "whole/kit"), data, int(layer)


@pytest.fixture
def server(registry: str) -> Iterator[FaultServer]:
    handle = FaultServer(registry)
    yield handle
    handle.close()


def test_a_blob_from_a_server_that_ignores_range_crosses_the_network_once(
    kit: tuple[str, bytes, int], server: FaultServer, mounts: Mounts
) -> None:
    reference, data, blob_size = kit
    mountpoint = mounts.mount(reference, registry=server.address, timeout=10)
    server.script("ignore_range", count=ALWAYS)
    assert (mountpoint / "weights.bin").read_bytes() == data
    sent = server.count("whole_blob_bytes")
    # About one blob: the first answers, read before the server's habit was known, cost what
    # sat in the sockets' buffers when they were dropped.
    assert blob_size <= sent < blob_size + 16 * MiB, sent
    assert "ignores Range requests" in mounts.log
    # After the fault: the same mount reads from its cache, a fresh one from the registry.
    server.heal()
    server.reset()
    assert (mountpoint / "weights.bin").read_bytes() == data
    assert server.count("whole_blob_bytes") == 0
    fresh = mounts.mount(
        reference, registry=server.address, cache_dir=mounts.base / "fresh", name="again"
    )
    assert (fresh / "weights.bin").read_bytes() == data
    assert server.count("blob_requests") >= 1


def test_reads_in_the_middle_of_a_blob_from_such_a_server_are_right(
    kit: tuple[str, bytes, int], server: FaultServer, mounts: Mounts, tmp_path: Path
) -> None:
    """Readers that jump about wait for the one stream, and get the right bytes."""
    reference, data, blob_size = kit
    mountpoint = mounts.mount(reference, registry=server.address, timeout=10)
    server.script("ignore_range", count=ALWAYS)
    with open(mountpoint / "weights.bin", "rb", buffering=0) as f:
        for offset in (40 * MiB + 17, 3 * MiB, SIZE - 1000, 20 * MiB):
            f.seek(offset)
            assert f.read(2 * MiB) == data[offset : offset + 2 * MiB]
    assert (mountpoint / "weights.bin").read_bytes() == data
    assert server.count("whole_blob_bytes") < blob_size + 16 * MiB
