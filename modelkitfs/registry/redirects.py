"""Where a registry sends a blob's bytes: the redirect cache.

Registries backed by object storage or a CDN answer a blob GET with a redirect to a signed URL.
Following it for every range would cost a round trip to the registry (and its auth) each time,
so the URL that served a blob is kept and its next ranges go straight there, without our
credentials. A URL fails in two ways: it is refused (expired, revoked: :class:`Expired`), and
is dropped at once; or its store blips, and it is tried once more before it is dropped. Then
the registry is asked again, by one reader (a single flight per blob), the others waiting to
use the URL it brings back.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass

from modelkitfs.errors import ObjectStorageError, RegistryError
from modelkitfs.primitives.singleflight import SingleFlight
from modelkitfs.registry.status import Expired

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
FAILURES_KEPT = 2  # failures of a URL whose store blips, before it is dropped


@dataclass
class Redirect:
    url: str
    failures: int = 0


class Redirects:
    """The object-storage URLs of blobs, by digest, and which blobs are redirected at all."""

    def __init__(self) -> None:
        self._urls: dict[str, Redirect] = {}
        self._redirected: set[str] = set()
        self.resolving: SingleFlight[str, None] = SingleFlight()
        """A dropped redirect being resolved again through the registry, by blob."""

    def get(self, digest: str) -> Redirect | None:
        return self._urls.get(digest)

    def remember(self, digest: str, url: str) -> None:
        self._urls[digest] = Redirect(url)
        self._redirected.add(digest)

    def redirected(self, digest: str) -> bool:
        """Whether the registry sent blob ``digest`` elsewhere (its URL may have been dropped
        since)."""
        return digest in self._redirected

    def failed(self, digest: str, redirect: Redirect, failure: ObjectStorageError) -> None:
        """``redirect`` failed with ``failure``: drop it when it is refused, or failed before."""
        redirect.failures += 1
        refused = isinstance(failure, Expired) or redirect.failures >= FAILURES_KEPT
        if refused and self._urls.get(digest) is redirect:
            log.info("dropping the redirect of %s (%s); asking the registry", digest, failure)
            del self._urls[digest]


def origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def too_many(what: str) -> RegistryError:
    return RegistryError(
        f"{what} was redirected more than {MAX_REDIRECTS} times: the registry or its object "
        "storage is misconfigured; report it to the registry owner"
    )
