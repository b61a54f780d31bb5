"""Mirrors under trio's MockClock: asked first with containerd's ``?ns=``, the registry after
them; one that cannot be reached is left alone for a while, one that lacks the content is
asked again next time."""

from __future__ import annotations

import trio
import trio.testing

from modelkitfs.errors import GaveUp, NotFound, Unreachable
from modelkitfs.registry.mirrors import MIRROR_RETRY_AFTER, Mirrors

ORIGIN = "https://reg.test"
MIRRORS = ["https://m1.test", "https://m2.test"]


class Sources:
    """Fails the bases in ``failing`` with their error; records every URL asked."""

    def __init__(self, mirrors: Mirrors, failing: dict[str, Exception]) -> None:
        self.mirrors = mirrors
        self.failing = failing
        self.asked: list[str] = []

    async def fetch(self, base: str) -> str:
        url = self.mirrors.url(base, "/v2/a/manifests/v1")
        self.asked.append(url)
        if base in self.failing:
            raise self.failing[base]
        return url


def run(main):  # type: ignore[no-untyped-def]
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_first_mirror_that_has_it_answers_with_ns() -> None:
    mirrors = Mirrors("reg.test", ORIGIN, MIRRORS)
    sources = Sources(mirrors, {MIRRORS[0]: NotFound("no such tag")})

    async def main() -> str:
        return await mirrors.via(sources.fetch, "a:v1")

    assert run(main) == "https://m2.test/v2/a/manifests/v1?ns=reg.test"
    assert sources.asked[0] == "https://m1.test/v2/a/manifests/v1?ns=reg.test"


def test_the_registry_is_asked_without_ns_when_no_mirror_has_it() -> None:
    mirrors = Mirrors("reg.test", ORIGIN, MIRRORS)
    sources = Sources(mirrors, dict.fromkeys(MIRRORS, NotFound("missing")))

    async def main() -> str:
        return await mirrors.via(sources.fetch, "a:v1")

    assert run(main) == "https://reg.test/v2/a/manifests/v1"


def test_an_unreachable_mirror_is_skipped_for_a_while_one_lacking_content_is_not() -> None:
    down = Unreachable("refused")
    mirrors = Mirrors("reg.test", ORIGIN, MIRRORS)
    sources = Sources(mirrors, {MIRRORS[0]: GaveUp("gave up", down), MIRRORS[1]: NotFound("x")})

    async def main() -> list[list[str]]:
        rounds = []
        for wait in (0, MIRROR_RETRY_AFTER - 1, 2):
            await trio.sleep(wait)
            sources.asked.clear()
            await mirrors.via(sources.fetch, "a:v1")
            rounds.append([url.split("/")[2] for url in sources.asked])
        return rounds

    assert run(main) == [
        ["m1.test", "m2.test", "reg.test"],
        ["m2.test", "reg.test"],  # m1 is left alone, m2 (it answered) is asked again
        ["m1.test", "m2.test", "reg.test"],  # a minute on, m1 is asked again
    ]
