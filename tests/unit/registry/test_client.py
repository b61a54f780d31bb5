"""The registry client over a transport double that fails chosen requests: retries by type,
transfers resumed from the first missing byte, lying 206s never believed, object storage
failures retried then resolved again through the registry. No sockets, no registry."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import trio
import trio.testing

from modelkitfs.errors import GaveUp, NotFound, RegistryError
from modelkitfs.registry import NetworkOptions, RegistryClient
from modelkitfs.registry.testing import (
    FailingRanges,
    MemoryRanges,
    MemoryRegistry,
    cut,
    lie,
    reset,
    status,
)

DATA = np.random.default_rng(7).bytes(3 * 1024 * 1024 + 11)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
PATH = f"/v2/team/kit/blobs/{DIGEST}"
STORAGE = "http://storage.test/bucket/blob?sig=1"


def client_over(ranges: MemoryRanges | FailingRanges, timeout: float = 30) -> RegistryClient:
    options = NetworkOptions(plain_http=True, timeout=timeout)
    return RegistryClient("reg.test", options, credentials=lambda host: None, transport=ranges)


def read(client: RegistryClient, start: int = 0, end: int = len(DATA)) -> bytes:
    async def main() -> bytes:
        try:
            return await client.get_range("team/kit", DIGEST, start, end)
        finally:
            await client.aclose()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_transient_failure_is_retried_and_counted() -> None:
    memory = MemoryRanges({PATH: DATA})
    client = client_over(FailingRanges(memory, {1: reset(), 2: status(503)}))
    assert read(client) == DATA
    assert len(memory.served) == 3 and client.stats.retries == 2


def test_a_cut_transfer_resumes_after_the_last_whole_piece_it_delivered() -> None:
    memory = MemoryRanges({PATH: DATA})
    client = client_over(FailingRanges(memory, {1: cut(2_500_000), 2: cut(10)}))
    assert read(client) == DATA
    # Two whole MiB came before the first cut; nothing whole before the second.
    resumed = f"bytes={2 * 1024 * 1024}-{len(DATA) - 1}"
    assert [s.headers["Range"] for s in memory.served[1:]] == [resumed, resumed]


def test_each_piece_is_delivered_once_as_it_arrives_whatever_the_cuts() -> None:
    memory = MemoryRanges({PATH: DATA})
    client = client_over(FailingRanges(memory, {1: cut(1_500_000), 3: cut(1_100_000)}))
    pieces: list[bytes] = []

    async def main() -> None:
        try:
            await client.deliver_range("team/kit", DIGEST, 0, len(DATA), 2**20, pieces.append)
        finally:
            await client.aclose()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert b"".join(pieces) == DATA
    assert [len(p) for p in pieces] == [2**20, 2**20, 2**20, 11]


def test_a_206_for_another_range_is_never_believed() -> None:
    memory = MemoryRanges({PATH: DATA})
    client = client_over(FailingRanges(memory, {1: lie("a 206 without Content-Range")}))
    assert read(client, 5, 105) == DATA[5:105]
    assert len(memory.served) == 2


def test_404_is_final() -> None:
    memory = MemoryRanges({})
    with pytest.raises(NotFound):
        read(client_over(memory))
    assert len(memory.served) == 1


def test_a_failure_that_lasts_gives_up_naming_the_last_cause() -> None:
    memory = MemoryRanges({PATH: DATA})
    client = client_over(FailingRanges(memory, dict.fromkeys(range(1, 100), status(502))), 5)
    with pytest.raises(GaveUp) as failure:
        read(client)
    message = str(failure.value)
    assert "HTTP 502" in message and "gave up after 8 attempts" in message
    assert message.count(DIGEST) == 1


def test_object_storage_failures_are_retried_then_resolved_again() -> None:
    memory = MemoryRanges({PATH: DATA, "/bucket/blob": DATA}, redirects={PATH: STORAGE})
    faults = {3: reset(), 4: reset()}  # 1: registry, 2: storage, then storage fails twice
    client = client_over(FailingRanges(memory, faults))

    async def main() -> tuple[bytes, bytes]:
        first = await client.get_range("team/kit", DIGEST, 0, 10)
        second = await client.get_range("team/kit", DIGEST, 10, 20)
        await client.aclose()
        return first, second

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == (
        DATA[:10],
        DATA[10:20],
    )
    hosts = [s.url.split("/")[2] for s in memory.served]
    # The redirect is reused, tried twice when it fails, then the registry is asked again.
    assert hosts == [
        "reg.test",
        "storage.test",
        "storage.test",
        "storage.test",
        "reg.test",
        "storage.test",
    ]
    assert all("Authorization" not in s.headers for s in memory.served[1:])


def test_object_storage_refusing_a_url_asks_the_registry_again_without_a_login_hint() -> None:
    memory = MemoryRanges({PATH: DATA, "/bucket/blob": DATA}, redirects={PATH: STORAGE})
    client = client_over(FailingRanges(memory, dict.fromkeys(range(2, 100, 2), status(403))), 3)
    with pytest.raises(GaveUp) as failure:
        read(client)
    assert "object storage" in str(failure.value) and "kit login" not in str(failure.value)
    assert [s.url.split("/")[2] for s in memory.served[:4]] == ["reg.test", "storage.test"] * 2


def test_a_redirect_loop_is_final() -> None:
    memory = MemoryRanges({}, redirects={PATH: f"http://reg.test{PATH}"})
    with pytest.raises(RegistryError, match="redirected more than 5 times") as failure:
        read(client_over(memory))
    assert not isinstance(failure.value, GaveUp) and len(memory.served) == 6


def test_a_manifest_fetched_by_tag_is_not_fetched_again_by_its_digest() -> None:
    registry = MemoryRegistry()
    raw = b'{"schemaVersion": 2, "layers": []}'
    digest = registry.push("team/kit", "v1", raw, "application/vnd.oci.image.manifest.v1+json", {})

    async def main() -> None:
        client = registry.client()
        try:
            by_tag = await client.get_manifest("team/kit", "v1")
            by_digest = await client.get_manifest("team/kit", digest)
            again = await client.get_manifest("team/kit", "v1")  # a tag may move: asked again
        finally:
            await client.aclose()
        assert by_tag.digest == by_digest.digest == again.digest == digest
        assert by_digest.raw == raw

    trio.run(main)
    assert registry.documents == ["/v2/team/kit/manifests/v1"] * 2
