"""HTTP access to one registry with the OCI distribution API: the client facade.

One :class:`RegistryClient` per registry host holds one connection pool (connections are reused
across every blob of every repository), a bound on requests in flight, and the auth state. It
knows nothing of caches or tar: it hands back verified manifests and the raw bytes of blob
ranges. The jobs it composes each have a module: mirrors (:mod:`.mirrors`), documents and their
size caps (:mod:`.documents`), redirects to object storage (:mod:`.redirects`), statuses as typed
errors (:mod:`.status`), retries (:mod:`.retry`: one policy, by the type of the failure, for
every request), and how range bytes travel (:mod:`.ranges`).
"""

from __future__ import annotations

import dataclasses
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import cachetools
import httpx
import trio

from modelkitfs.errors import NotFound, ObjectStorageError, RangeIgnored, TransientError
from modelkitfs.primitives.digests import sha256_digest
from modelkitfs.primitives.singleflight import WAITED
from modelkitfs.registry.auth import Authenticator
from modelkitfs.registry.credentials import Credential, find_credential
from modelkitfs.registry.documents import (
    MANIFEST_ACCEPT,
    OCI_INDEX,
    check_blob,
    check_manifest,
    get_document,
)
from modelkitfs.registry.mirrors import Mirrors
from modelkitfs.registry.network import (
    NetworkOptions,
    blocking_ssl_context,
    endpoint_url,
    make_http_client,
    uses_proxy,
)
from modelkitfs.registry.ranges import (
    HttpxRanges,
    RangeFetcher,
    RangeRequest,
    RangeResult,
    RangeTransport,
    ThreadedRanges,
)
from modelkitfs.registry.ranges.exchange import REDIRECTS, WHOLE_BLOB_KEPT
from modelkitfs.registry.redirects import MAX_REDIRECTS, Redirects, origin, too_many
from modelkitfs.registry.retry import MAX_ATTEMPTS, RetryBudget, retrying
from modelkitfs.registry.source import Deliver, FetchStats, Manifest
from modelkitfs.registry.status import at_storage, host, registry_error, storage_error

log = logging.getLogger(__name__)

UNREACHABLE_ATTEMPTS = 3  # of a document: a wrong address is reported at once
DOWNLOAD_GRACE = 2.0  # seconds a range download retries beyond --timeout
FLOOR_RATE = 1024 * 1024  # bytes per second a transfer may not fall below for long
RANGE_PIECE = 1024 * 1024  # a range read whole is resumed after its last whole MiB
MANIFESTS_KEPT = 4 * 1024 * 1024  # bytes of manifests kept by digest
# Registries whose API lives on another host than their name (Docker Hub).
API_HOSTS = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}

T = TypeVar("T")


@dataclass(frozen=True)
class _Blob:
    """The blob a range request is for, as messages name it (``what``); ``mirror``: asked of
    a mirror, whose redirects are not kept."""

    repository: str
    digest: str
    what: str
    mirror: bool


class RegistryClient:
    """Talks to ``registry`` (through its mirrors first, if any), ``max_in_flight`` requests
    at once. ``transport`` carries blob ranges and ``http_transport`` everything else, in place
    of the network (see :mod:`modelkitfs.registry.testing`)."""

    in_place = False  # a BlobSource whose blobs travel: they go through the block cache

    def __init__(
        self,
        registry: str,
        options: NetworkOptions | None = None,
        *,
        credentials: Callable[[str], Credential | None] = find_credential,
        max_in_flight: int = 32,
        transport: RangeTransport | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.registry = registry
        self.options = (options or NetworkOptions()).with_environment()
        self.plain_http = self.options.plain_http
        self.base_url = endpoint_url(API_HOSTS.get(registry, registry), self.plain_http)
        mirrors = [endpoint_url(m, self.plain_http) for m in self.options.mirrors if m != registry]
        self._mirrors = Mirrors(registry, self.base_url, mirrors)
        self.stats = FetchStats()
        self._credentials = credentials
        self._auth: dict[str, Authenticator] = {}
        self._redirects = Redirects()
        # A manifest named by its digest never changes: one fetched by tag (a tag resolved by
        # ``serve``) is not fetched again when its kit is then opened by digest.
        self._manifests: cachetools.LRUCache[tuple[str, str], Manifest] = cachetools.LRUCache(
            MANIFESTS_KEPT, getsizeof=lambda manifest: len(manifest.raw)
        )
        self.ignores_range: set[str] = set()  # hosts that answered a range with the whole blob
        self._limiter = trio.CapacityLimiter(max_in_flight)
        self._http = make_http_client(self.options, max_in_flight * 2, http_transport)
        # Blob bytes through blocking connections in threads, unless a proxy is in play.
        self._ranges: RangeTransport
        if transport is not None:
            self._ranges = transport
        elif uses_proxy(self.options):
            self._ranges = HttpxRanges(self._http, self.plain_http)
        else:
            fetcher = RangeFetcher(blocking_ssl_context(self.options), self.options.stall_timeout)
            threads = trio.CapacityLimiter(max_in_flight)
            self._ranges = ThreadedRanges(fetcher, threads, self.plain_http)

    @property
    def mirrors(self) -> list[str]:
        return self._mirrors.mirrors

    async def aclose(self) -> None:
        await self._ranges.aclose()
        await self._http.aclose()

    # --- documents ----------------------------------------------------------------------------

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        """Fetch a manifest or index by tag or digest and verify it."""
        if (kept := self._manifests.get((repository, identifier))) is not None:
            return kept
        sep = "@" if ":" in identifier else ":"
        what = f"{self.registry}/{repository}{sep}{identifier}"

        async def fetch(base: str) -> Manifest:
            url = self._mirrors.url(base, f"/v2/{repository}/manifests/{identifier}")
            response = await self._document(url, repository, {"Accept": MANIFEST_ACCEPT}, what)
            return check_manifest(response, identifier, what)

        manifest = await self._mirrors.via(fetch, what)
        if len(manifest.raw) <= MANIFESTS_KEPT:
            self._manifests[(repository, manifest.digest)] = manifest
        return manifest

    async def referrers(self, repository: str, digest: str) -> Manifest | None:
        """The OCI 1.1 referrers of manifest ``digest`` (an image index listing them); None
        where the registry has no referrers API (404: CNCF Distribution 2.8), for the caller to
        read the fallback tag ``sha256-<hex>`` instead. The index is the registry's answer of
        the moment: it is never kept."""
        what = f"referrers of {self.registry}/{repository}@{digest}"

        async def fetch(base: str) -> Manifest:
            url = self._mirrors.url(base, f"/v2/{repository}/referrers/{digest}")
            response = await self._document(url, repository, {"Accept": OCI_INDEX}, what)
            return Manifest(sha256_digest(response.content), OCI_INDEX, response.content)

        try:
            return await self._mirrors.via(fetch, what)
        except NotFound:
            return None

    async def get_blob(self, repository: str, digest: str, size: int | None = None) -> bytes:
        """Fetch a small blob (a config) whole and verify it."""
        what = f"blob {digest} of {self.registry}/{repository}"

        async def fetch(base: str) -> bytes:
            url = self._mirrors.url(base, f"/v2/{repository}/blobs/{digest}")
            response = await self._document(url, repository, {}, what)
            return check_blob(response.content, digest, size, what)

        data = await self._mirrors.via(fetch, what)
        self.stats.blob_bytes += len(data)
        return data

    async def _document(
        self, url: str, repository: str, headers: dict[str, str], what: str
    ) -> httpx.Response:
        """A document read whole, retried by the policy."""
        budget = RetryBudget(self.options.timeout, unreachable_attempts=UNREACHABLE_ATTEMPTS)

        async def attempt() -> httpx.Response:
            with trio.move_on_at(budget.deadline):
                async with self._limiter:
                    response = await get_document(
                        self._http,
                        self._authenticator(url),
                        url,
                        f"repository:{repository}:pull",
                        headers,
                        self.stats,
                        registry=self.registry,
                        plain_http=self.plain_http,
                    )
                if response.status_code != 200:
                    raise registry_error(
                        self.registry,
                        response.status_code,
                        what,
                        response.headers.get("Retry-After", ""),
                    )
                return response
            raise TransientError(
                f"registry {host(url)} sent no answer within {budget.seconds:g} s (--timeout)"
            )

        return await self._retrying(attempt, budget, what)

    # --- blob ranges --------------------------------------------------------------------------

    async def get_range(self, repository: str, digest: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of a blob."""
        pieces: list[memoryview] = []
        await self.deliver_range(repository, digest, start, end, RANGE_PIECE, pieces.append)
        return pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)

    async def deliver_range(
        self, repository: str, digest: str, start: int, end: int, piece: int, deliver: Deliver
    ) -> None:
        """Bytes ``[start, end)`` of a blob, handed to ``deliver`` as they arrive, in order, in
        buffers of ``piece`` bytes (the last one shorter). A transfer cut short resumes (on
        another connection, or mirror) after the last buffer delivered: nothing is delivered
        twice, and every buffer starts a whole number of ``piece`` bytes into the range."""
        what = f"blob {digest} of {self.registry}/{repository}"
        position = start

        def take(buffer: memoryview) -> None:
            nonlocal position
            position += len(buffer)
            deliver(buffer)

        async def fetch(base: str) -> None:
            blob = _Blob(repository, digest, what, mirror=base != self.base_url)
            url = self._mirrors.url(base, f"/v2/{repository}/blobs/{digest}")
            attempts = 1 if blob.mirror else MAX_ATTEMPTS  # a failing mirror: next
            # A little longer than a read waits: the kernel's second read of a page whose
            # readahead failed joins this download instead of starting one of its own.
            budget = RetryBudget(self.options.timeout, attempts, grace=DOWNLOAD_GRACE)

            async def attempt() -> None:
                if position == end:
                    return  # all of it came before the answer proved wrong past its end
                deadline = min(budget.deadline, trio.current_time() + self._share(end - position))
                await self._range_once(
                    blob, RangeRequest(url, position, end, piece, take, deadline)
                )

            await self._retrying(attempt, budget, f"reading {what}")

        await self._mirrors.via(fetch, what)
        self.stats.ranges += 1
        self.stats.blob_bytes += end - start

    def _share(self, length: int) -> float:
        """How long one transfer of ``length`` bytes may take before it is abandoned and
        resumed on another connection: long enough at ``FLOOR_RATE``, never more than half
        of ``--timeout`` (so that a transfer stuck at a trickle leaves time for another)."""
        seconds = max(self.options.stall_timeout, length / FLOOR_RATE)
        return min(seconds, self.options.timeout / 2)

    async def _range_once(self, blob: _Blob, request: RangeRequest) -> None:
        """One attempt: from the cached redirect if there is one, else from the registry."""
        while True:
            if (redirect := self._redirects.get(blob.digest)) is not None:
                try:
                    await self._get(
                        dataclasses.replace(request, url=redirect.url), blob, storage=True
                    )
                except ObjectStorageError as exc:
                    self._redirects.failed(blob.digest, redirect, exc)
                    raise
                return
            if not self._redirects.redirected(blob.digest) or blob.mirror:
                return await self._from_registry(blob, request)
            # One reader asks the registry again; the others wait for it and use its answer
            # (or, if it failed, ask themselves).
            done = await self._redirects.resolving.run_or_wait(
                blob.digest, self._from_registry, blob, request
            )
            if done is not WAITED:
                return

    async def _from_registry(self, blob: _Blob, request: RangeRequest) -> None:
        """The range from the registry, following its redirects; the object-storage URL that
        served it is kept for the next ranges of the blob."""
        registry = origin(request.url)
        for _ in range(MAX_REDIRECTS + 1):
            storage = origin(request.url) != registry
            keep = storage and not blob.mirror
            try:
                location = await self._get(request, blob, storage=storage, redirects=True)
            except RangeIgnored:  # the URL served: its whole answer is kept open there
                if keep:
                    self._redirects.remember(blob.digest, request.url)
                raise
            if location is None:
                if keep:
                    self._redirects.remember(blob.digest, request.url)
                return
            request = dataclasses.replace(request, url=urllib.parse.urljoin(request.url, location))
        raise too_many(blob.what)

    async def _get(
        self, request: RangeRequest, blob: _Blob, *, storage: bool, redirects: bool = False
    ) -> str | None:
        """One GET of the range, its pieces handed on as they come: to object ``storage``
        without credentials (its failures are :class:`ObjectStorageError`), else to the
        registry with them. None once the whole range was delivered; with ``redirects``, a
        redirect's location for the caller to follow."""
        url, what = request.url, blob.what
        async with self._limiter:
            try:
                if storage:
                    result = await self._send(request)
                else:
                    result = await self._authorized(request, blob.repository)
            except TransientError as exc:
                if storage:
                    raise at_storage(exc, url) from exc
                raise
        if result.status in REDIRECTS:
            if not redirects:
                raise ObjectStorageError(f"object storage {host(url)} redirected a blob URL again")
            if not result.location:
                raise TransientError(f"{host(url)} sent a redirect with no Location")
            return result.location
        if result.status not in (200, 206):
            if storage:
                raise storage_error(result.url, result.status, what, result.retry_after)
            raise registry_error(self.registry, result.status, what, result.retry_after)
        where = f"object storage {host(url)}" if storage else f"registry {host(url)}"
        if result.status == 200 and host(url) not in self.ignores_range:
            log.warning("%s ignores Range requests: blobs are read in order, once", where)
            self.ignores_range.add(host(url))
        if result.problem == WHOLE_BLOB_KEPT:
            raise RangeIgnored(f"{where} answered a range of {what} with the whole blob")
        if result.problem:
            raise (ObjectStorageError if storage else TransientError)(
                f"{where} answered {result.problem}"
            )
        got = result.delivered
        if result.broken or got != request.length:
            # What was delivered stays: the retry asks for the rest.
            raise TransientError(
                f"{where}: {result.broken or f'short read of {got} of {request.length} bytes'}"
            )
        return None

    async def _authorized(self, request: RangeRequest, repository: str) -> RangeResult:
        """A range request to the registry with auth: a 401 challenge is answered once."""
        scope = f"repository:{repository}:pull"
        auth = self._authenticator(request.url)
        for attempt in range(2):
            header = await auth.header(self._http, scope)
            sent = dataclasses.replace(request, authorization=header.get("Authorization", ""))
            result = await self._send(sent)
            if result.status != 401:
                return result
            if attempt == 1:
                raise auth.refused(scope)
            await auth.authenticate(self._http, result.challenge, scope, sent.authorization or None)
        raise AssertionError("unreachable")

    async def _send(self, request: RangeRequest) -> RangeResult:
        """One request through the range transport, counted with its answer's status and
        latency."""
        self.stats.requests += 1
        sent_at = trio.current_time()
        result = await self._ranges.get(request)
        self.stats.answered(result.status, trio.current_time() - sent_at)
        return result

    # --- common -------------------------------------------------------------------------------

    async def _retrying(
        self, attempt: Callable[[], Awaitable[T]], budget: RetryBudget, what: str
    ) -> T:
        def count(failure: TransientError) -> None:
            self.stats.retries += 1

        return await retrying(attempt, budget, what, on_failure=count)

    def _authenticator(self, url: str) -> Authenticator:
        where = host(url)
        if where not in self._auth:
            self._auth[where] = Authenticator(where, self._credentials)
        return self._auth[where]
