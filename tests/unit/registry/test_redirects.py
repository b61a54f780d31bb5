"""The redirect cache: a refused URL is dropped at once, one whose store blips is kept for one
more failure; a dropped redirect is resolved again by one reader while the others wait for its
URL (one registry request for a burst of readers)."""

from __future__ import annotations

import hashlib

import trio
import trio.testing

from modelkitfs.errors import ObjectStorageError
from modelkitfs.registry import NetworkOptions, RegistryClient
from modelkitfs.registry.ranges import RangeRequest, RangeResult
from modelkitfs.registry.redirects import Redirects
from modelkitfs.registry.status import Expired
from modelkitfs.registry.testing import FailingRanges, MemoryRanges, status

DATA = bytes(range(256)) * 4096
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
PATH = f"/v2/team/kit/blobs/{DIGEST}"
STORAGE = "http://storage.test/bucket/blob?sig=1"


def test_a_refused_url_is_dropped_at_once() -> None:
    redirects = Redirects()
    redirects.remember(DIGEST, STORAGE)
    redirect = redirects.get(DIGEST)
    assert redirect is not None
    redirects.failed(DIGEST, redirect, Expired("HTTP 403"))
    assert redirects.get(DIGEST) is None and redirects.redirected(DIGEST)


def test_a_blip_is_forgiven_once() -> None:
    redirects = Redirects()
    redirects.remember(DIGEST, STORAGE)
    redirect = redirects.get(DIGEST)
    assert redirect is not None
    redirects.failed(DIGEST, redirect, ObjectStorageError("reset"))
    assert redirects.get(DIGEST) is redirect
    redirects.failed(DIGEST, redirect, ObjectStorageError("reset"))
    assert redirects.get(DIGEST) is None


def test_a_stale_failure_does_not_drop_a_newer_url() -> None:
    redirects = Redirects()
    redirects.remember(DIGEST, STORAGE)
    old = redirects.get(DIGEST)
    assert old is not None
    redirects.remember(DIGEST, STORAGE + "&fresh")
    redirects.failed(DIGEST, old, Expired("HTTP 403"))
    assert redirects.get(DIGEST) is not None and redirects.get(DIGEST) is not old


class SlowRegistry:
    """The registry takes a second to answer (object storage answers at once), so that the
    readers retrying after a refused URL come while one of them is asking it."""

    def __init__(self, inner: FailingRanges) -> None:
        self.inner = inner

    async def get(self, request: RangeRequest) -> RangeResult:
        if request.url.split("/")[2] == "reg.test":
            await trio.sleep(1)
        return await self.inner.get(request)

    async def aclose(self) -> None:
        pass


def test_readers_after_a_dropped_redirect_ask_the_registry_once() -> None:
    memory = MemoryRanges({PATH: DATA, "/bucket/blob": DATA}, redirects={PATH: STORAGE})
    # 1: the registry redirects, 2: storage serves; 3-10: storage refuses the URL, to each
    # of eight readers at once.
    faults = dict.fromkeys(range(3, 11), status(403))
    client = RegistryClient(
        "reg.test",
        NetworkOptions(plain_http=True, timeout=30),
        credentials=lambda host: None,
        transport=SlowRegistry(FailingRanges(memory, faults)),
    )
    starts = range(0, 8000, 1000)

    async def main() -> dict[int, bytes]:
        got: dict[int, bytes] = {}
        await client.get_range("team/kit", DIGEST, 0, 10)

        async def read(start: int) -> None:
            got[start] = await client.get_range("team/kit", DIGEST, start, start + 100)

        async with trio.open_nursery() as nursery:
            for start in starts:
                nursery.start_soon(read, start)
        await client.aclose()
        return got

    got = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert got == {start: DATA[start : start + 100] for start in starts}
    hosts = [s.url.split("/")[2] for s in memory.served]
    assert hosts.count("storage.test") == 1 + 8 + 8  # each reader: refused, then served
    assert hosts.count("reg.test") == 2  # the first redirect, one resolution for all eight
