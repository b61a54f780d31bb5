"""HTTP access to one registry with the OCI distribution API.

One :class:`RegistryClient` per registry host holds one connection pool (connections are reused
across every blob of every repository), a bound on requests in flight, and the auth state. It
knows nothing of caches or tar: it hands back verified manifests and the raw bytes of blob ranges.

Every request goes through one retry policy (:mod:`modelkitfs.registry.retry`), by the type of
its failure. Blob ranges that the registry redirects to object storage or a CDN are fetched
from there without our credentials, the URL reused until it fails: then it is tried once more,
dropped, and resolved again through the registry (by one reader; the others wait for it),
keeping the bytes that arrived.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import trio

from modelkitfs.digests import sha256_digest, verify
from modelkitfs.errors import (
    AuthenticationError,
    DigestMismatch,
    GaveUp,
    NotFound,
    ObjectStorageError,
    RangeIgnored,
    RegistryError,
    TransientError,
    Unreachable,
)
from modelkitfs.registry.auth import Authenticator, login_hint
from modelkitfs.registry.credentials import Credential, find_credential
from modelkitfs.registry.partial import MAX_DOCUMENT_SIZE
from modelkitfs.registry.range_transport import HttpxRanges, RangeTransport, ThreadedRanges
from modelkitfs.registry.ranges import REDIRECTS, WHOLE_BLOB_KEPT, RangeFetcher, RangeResult
from modelkitfs.registry.retry import MAX_ATTEMPTS, RetryBudget, retry_after_seconds, retrying
from modelkitfs.registry.transport import (
    NetworkOptions,
    blocking_ssl_context,
    describe,
    endpoint_url,
    make_http_client,
    transport_failure,
    uses_proxy,
)

log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MIRROR_RETRY_AFTER = 60.0
MAX_REDIRECTS = 5
UNREACHABLE_ATTEMPTS = 3  # of a document: a wrong address is reported at once
DOWNLOAD_GRACE = 2.0  # seconds a range download retries beyond --timeout
FLOOR_RATE = 1024 * 1024  # bytes per second a transfer may not fall below for long
# Registries whose API lives on another host than their name (Docker Hub).
API_HOSTS = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}

T = TypeVar("T")
Buffer = bytes | bytearray

__all__ = ["FetchStats", "Manifest", "RegistryClient", "sha256_digest", "verify"]


@dataclass
class Manifest:
    """A manifest (or index) as the registry sent it, digest verified."""

    digest: str
    media_type: str
    raw: bytes


@dataclass
class FetchStats:
    """What this client pulled over the network; shown by the demo and ``getfattr``."""

    requests: int = 0
    blob_bytes: int = 0
    ranges: int = 0
    retries: int = 0


@dataclass
class _Redirect:
    url: str
    failures: int = 0


class _Partial(TransientError):
    """A range whose body stopped short: ``data`` is what came, to resume after."""

    def __init__(self, message: str, data: list[Buffer]) -> None:
        super().__init__(message)
        self.data = data


class _Expired(ObjectStorageError):
    """Object storage refused a URL (expired, revoked): drop it at once."""


class RegistryClient:
    """Talks to ``registry`` (through its mirrors first, if any), ``max_in_flight`` requests
    at once."""

    in_place = False  # a BlobSource whose blobs travel: they go through the block cache

    def __init__(
        self,
        registry: str,
        options: NetworkOptions | None = None,
        *,
        credentials: Callable[[str], Credential | None] = find_credential,
        max_in_flight: int = 32,
        transport: RangeTransport | None = None,
    ) -> None:
        self.registry = registry
        self.options = (options or NetworkOptions()).with_environment()
        self.plain_http = self.options.plain_http
        self.base_url = endpoint_url(API_HOSTS.get(registry, registry), self.plain_http)
        self.mirrors = [
            endpoint_url(m, self.plain_http) for m in self.options.mirrors if m != registry
        ]
        self.stats = FetchStats()
        self._credentials = credentials
        self._auth: dict[str, Authenticator] = {}
        self._redirects: dict[str, _Redirect] = {}  # blob digest -> where the registry sent us
        self._redirected: set[str] = set()  # blobs the registry redirects
        self._resolving: dict[str, trio.Event] = {}  # a dropped redirect being resolved again
        self._mirror_down_until: dict[str, float] = {}
        self.ignores_range: set[str] = set()  # hosts that answered a range with the whole blob
        self._limiter = trio.CapacityLimiter(max_in_flight)
        self._http = make_http_client(self.options, max_in_flight * 2)
        # Blob bytes through blocking connections in threads, unless a proxy is in play.
        if transport is not None:
            self._ranges = transport
        elif uses_proxy(self.options):
            self._ranges = HttpxRanges(self._http, self.plain_http)
        else:
            fetcher = RangeFetcher(blocking_ssl_context(self.options), self.options.stall_timeout)
            threads = trio.CapacityLimiter(max_in_flight)
            self._ranges = ThreadedRanges(fetcher, threads, self.plain_http)

    async def aclose(self) -> None:
        await self._ranges.aclose()
        await self._http.aclose()

    # --- documents ----------------------------------------------------------------------------

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        """Fetch a manifest or index by tag or digest and verify it."""
        sep = "@" if ":" in identifier else ":"
        what = f"{self.registry}/{repository}{sep}{identifier}"

        async def fetch(base: str) -> Manifest:
            url = self._url(base, f"/v2/{repository}/manifests/{identifier}")
            response = await self._document(url, repository, {"Accept": MANIFEST_ACCEPT}, what)
            return _check_manifest(response, identifier, what)

        return await self._via_mirrors(fetch, what)

    async def get_blob(self, repository: str, digest: str, size: int | None = None) -> bytes:
        """Fetch a small blob (a config) whole and verify it."""
        what = f"blob {digest} of {self.registry}/{repository}"

        async def fetch(base: str) -> bytes:
            url = self._url(base, f"/v2/{repository}/blobs/{digest}")
            data = (await self._document(url, repository, {}, what)).content
            if size is not None and len(data) != size:
                raise DigestMismatch(f"{what} has {len(data)} bytes, its descriptor says {size}")
            verify(data, digest, what)
            return data

        data = await self._via_mirrors(fetch, what)
        self.stats.blob_bytes += len(data)
        return data

    async def _document(
        self, url: str, repository: str, headers: dict[str, str], what: str
    ) -> httpx.Response:
        """A document read whole (at most ``MAX_DOCUMENT_SIZE``), retried by the policy."""
        budget = RetryBudget(self.options.timeout, unreachable_attempts=UNREACHABLE_ATTEMPTS)

        async def attempt() -> httpx.Response:
            with trio.move_on_at(budget.deadline):
                async with self._limiter:
                    response = await self._send(url, repository, headers, stream=False)
                if response.status_code != 200:
                    self._raise_for_status(response, what)
                return response
            raise TransientError(
                f"registry {_host(url)} sent no answer within {budget.seconds:g} s (--timeout)"
            )

        return await self._retrying(attempt, budget, what)

    # --- blob ranges --------------------------------------------------------------------------

    async def get_range(self, repository: str, digest: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of a blob."""
        pieces = await self.get_range_pieces(repository, digest, start, end, end - start)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def get_range_pieces(
        self, repository: str, digest: str, start: int, end: int, piece: int
    ) -> list[Buffer]:
        """Bytes ``[start, end)`` of a blob in buffers that are, as a rule, ``piece`` bytes
        each (the last one shorter); after a transfer resumed in the middle they may be cut
        anywhere."""
        what = f"blob {digest} of {self.registry}/{repository}"

        async def fetch(base: str) -> list[Buffer]:
            attempts = MAX_ATTEMPTS if base == self.base_url else 1  # a failing mirror: next
            # A little longer than a read waits: the kernel's second read of a page whose
            # readahead failed joins this download instead of starting one of its own.
            budget = RetryBudget(self.options.timeout, attempts, grace=DOWNLOAD_GRACE)
            pieces: list[Buffer] = []
            position = start

            def keep(failure: TransientError) -> None:
                nonlocal position
                if isinstance(failure, _Partial):
                    pieces.extend(failure.data)
                    position += sum(len(p) for p in failure.data)

            async def attempt() -> list[Buffer]:
                deadline = min(budget.deadline, trio.current_time() + self._share(end - position))
                return pieces + await self._range_once(
                    base, repository, digest, position, end, piece, what, deadline
                )

            return await self._retrying(attempt, budget, f"reading {what}", keep)

        pieces = await self._via_mirrors(fetch, what)
        self.stats.ranges += 1
        self.stats.blob_bytes += end - start
        return pieces

    def _share(self, length: int) -> float:
        """How long one transfer of ``length`` bytes may take before it is abandoned and
        resumed on another connection: long enough at ``FLOOR_RATE``, never more than half
        of ``--timeout`` (so that a transfer stuck at a trickle leaves time for another)."""
        seconds = max(self.options.stall_timeout, length / FLOOR_RATE)
        return min(seconds, self.options.timeout / 2)

    async def _range_once(
        self,
        base: str,
        repository: str,
        digest: str,
        start: int,
        end: int,
        piece: int,
        what: str,
        deadline: float,
    ) -> list[Buffer]:
        """One attempt: from the cached redirect if there is one, else from the registry."""
        while True:
            if (redirect := self._redirects.get(digest)) is not None:
                try:
                    return await self._get(redirect.url, None, start, end, piece, what, deadline)
                except ObjectStorageError as exc:
                    redirect.failures += 1
                    if (isinstance(exc, _Expired) or redirect.failures >= 2) and (
                        self._redirects.get(digest) is redirect
                    ):
                        log.info(
                            "dropping the redirect of %s (%s); asking the registry", digest, exc
                        )
                        del self._redirects[digest]
                    raise
            if digest not in self._redirected or base != self.base_url:
                return await self._from_registry(
                    base, repository, digest, start, end, piece, what, deadline
                )
            if (pending := self._resolving.get(digest)) is not None:
                await pending.wait()  # another reader asks the registry: use its answer
                continue
            self._resolving[digest] = resolving = trio.Event()
            try:
                return await self._from_registry(
                    base, repository, digest, start, end, piece, what, deadline
                )
            finally:
                del self._resolving[digest]
                resolving.set()

    async def _from_registry(
        self,
        base: str,
        repository: str,
        digest: str,
        start: int,
        end: int,
        piece: int,
        what: str,
        deadline: float,
    ) -> list[Buffer]:
        """The range from the registry, following its redirects; the object-storage URL that
        served it is kept for the next ranges of the blob."""
        url = self._url(base, f"/v2/{repository}/blobs/{digest}")
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            storage = _origin(url) != origin
            keep, who = storage and base == self.base_url, None if storage else repository
            try:
                result = await self._get(url, who, start, end, piece, what, deadline, raw=True)
            except RangeIgnored:  # the URL served: its whole answer is kept open there
                if keep:
                    self._redirects[digest] = _Redirect(url)
                    self._redirected.add(digest)
                raise
            if not isinstance(result, RangeResult):
                if keep:
                    self._redirects[digest] = _Redirect(url)
                    self._redirected.add(digest)
                return result
            url = urllib.parse.urljoin(url, result.location)
        raise RegistryError(
            f"{what} was redirected more than {MAX_REDIRECTS} times: the registry or its object "
            "storage is misconfigured; report it to the registry owner"
        )

    async def _get(
        self,
        url: str,
        repository: str | None,
        start: int,
        end: int,
        piece: int,
        what: str,
        deadline: float,
        *,
        raw: bool = False,
    ) -> list[Buffer] | RangeResult:  # type: ignore[return]
        """One GET of the range: ``repository`` None for object storage (no credentials; its
        failures are :class:`ObjectStorageError`). The data, or with ``raw`` a redirect's
        result for the caller to follow."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        async with self._limiter:
            try:
                if repository is None:
                    self.stats.requests += 1
                    result = await self._ranges.get(url, headers, start, end, piece, deadline)
                else:
                    result = await self._authorized(
                        url, repository, headers, start, end, piece, deadline
                    )
            except TransientError as exc:
                if repository is None:
                    raise _at_storage(exc, url) from exc
                raise
        if result.status in REDIRECTS:
            if not raw:
                raise ObjectStorageError(f"object storage {_host(url)} redirected a blob URL again")
            if not result.location:
                raise TransientError(f"{_host(url)} sent a redirect with no Location")
            return result
        if result.status not in (200, 206):
            self._raise_for_range_status(result, what, storage=repository is None)
        where = f"object storage {_host(url)}" if repository is None else f"registry {_host(url)}"
        if result.status == 200 and _host(url) not in self.ignores_range:
            log.warning("%s ignores Range requests: blobs are read in order, once", where)
            self.ignores_range.add(_host(url))
        if result.problem == WHOLE_BLOB_KEPT:
            raise RangeIgnored(f"{where} answered a range of {what} with the whole blob")
        if result.problem:
            raise (ObjectStorageError if repository is None else TransientError)(
                f"{where} answered {result.problem}"
            )
        got = sum(len(p) for p in result.data)
        if result.broken or got != end - start:
            raise _Partial(
                f"{where}: {result.broken or f'short read of {got} of {end - start} bytes'}",
                list(result.data),
            )
        return list(result.data)

    async def _authorized(
        self,
        url: str,
        repository: str,
        headers: dict[str, str],
        start: int,
        end: int,
        piece: int,
        deadline: float,
    ) -> RangeResult:
        """A range request to the registry with auth: a 401 challenge is answered once."""
        scope = f"repository:{repository}:pull"
        auth = self._authenticator(url)
        for attempt in range(2):
            sent = {**headers, **await auth.header(self._http, scope)}
            self.stats.requests += 1
            result = await self._ranges.get(url, sent, start, end, piece, deadline)
            if result.status != 401:
                return result
            if attempt == 1:
                raise auth.refused(scope)
            await auth.authenticate(self._http, result.challenge, scope, sent.get("Authorization"))
        raise AssertionError("unreachable")

    # --- common -------------------------------------------------------------------------------

    async def _retrying(
        self,
        attempt: Callable[[], Awaitable[T]],
        budget: RetryBudget,
        what: str,
        on_failure: Callable[[TransientError], None] | None = None,
    ) -> T:
        def count(failure: TransientError) -> None:
            self.stats.retries += 1
            if on_failure is not None:
                on_failure(failure)

        return await retrying(attempt, budget, what, on_failure=count)

    async def _via_mirrors(self, fetch: Callable[[str], Awaitable[T]], what: str) -> T:
        """``fetch`` from each mirror in turn, then from the registry itself. A mirror that
        cannot be reached is left alone for a while; one that lacks the content is not."""
        for mirror in self.mirrors:
            if self._mirror_down_until.get(mirror, 0.0) > trio.current_time():
                continue
            try:
                return await fetch(mirror)
            except RegistryError as exc:
                log.info("mirror %s: %s; trying the next source", mirror, exc)
                if isinstance(exc, Unreachable) or (
                    isinstance(exc, GaveUp) and isinstance(exc.last, Unreachable)
                ):
                    self._mirror_down_until[mirror] = trio.current_time() + MIRROR_RETRY_AFTER
        return await fetch(self.base_url)

    def _url(self, base: str, path: str) -> str:
        if base == self.base_url:
            return base + path
        return f"{base}{path}?ns={self.registry}"  # containerd's mirror convention

    def _authenticator(self, url: str) -> Authenticator:
        host = _host(url)
        if host not in self._auth:
            self._auth[host] = Authenticator(host, self._credentials)
        return self._auth[host]

    async def _send(
        self, url: str, repository: str, headers: dict[str, str], *, stream: bool
    ) -> httpx.Response:
        """GET with auth: answer a 401 challenge once, then send again. A document's body is
        read whole, up to ``MAX_DOCUMENT_SIZE``."""
        scope = f"repository:{repository}:pull"
        auth = self._authenticator(url)
        for attempt in range(2):
            sent = {**headers, **await auth.header(self._http, scope)}
            request = self._http.build_request("GET", url, headers=sent)
            self.stats.requests += 1
            try:
                response = await self._http.send(request, stream=True)
                if response.is_redirect:
                    response = await self._follow(response, headers)
                if response.status_code != 401:
                    if not stream:
                        try:
                            await _read_at_most(response, MAX_DOCUMENT_SIZE, url)
                        finally:
                            await response.aclose()
                    return response
                await response.aclose()
            except httpx.TransportError as exc:
                raise transport_failure(_host(url), exc, self.plain_http) from exc
            if attempt == 1:
                raise auth.refused(scope)
            challenge = response.headers.get("WWW-Authenticate", "")
            await auth.authenticate(self._http, challenge, scope, sent.get("Authorization"))
        raise AssertionError("unreachable")

    async def _follow(self, response: httpx.Response, headers: dict[str, str]) -> httpx.Response:
        """Follow a document's redirects without our Authorization header off the host."""
        for _ in range(MAX_REDIRECTS):
            location = response.headers.get("Location")
            await response.aclose()
            if not location:
                raise TransientError(f"registry {self.registry} sent a redirect with no Location")
            target = response.url.join(location)
            # Only the Range header goes along: credentials are for the registry host alone.
            forward = {k: v for k, v in headers.items() if k.lower() == "range"}
            if target.host == response.url.host and target.port == response.url.port:
                forward = dict(response.request.headers)
            self.stats.requests += 1
            response = await self._http.send(
                self._http.build_request("GET", target, headers=forward), stream=True
            )
            if not response.is_redirect:
                return response
        raise RegistryError(f"registry {self.registry} redirected more than {MAX_REDIRECTS} times")

    def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        self._raise(response.status_code, what, response.headers.get("Retry-After", ""))

    def _raise_for_range_status(self, result: RangeResult, what: str, *, storage: bool) -> None:
        if not storage:
            self._raise(result.status, what, result.retry_after)
        host = _host(result.url)
        if result.status in RETRYABLE_STATUS:
            raise ObjectStorageError(
                f"object storage {host} answered HTTP {result.status} for {what}",
                retry_after_seconds(result.retry_after),
            )
        raise _Expired(
            f"object storage {host} refused the URL the registry gave for {what} "
            f"(HTTP {result.status}); it may have expired"
        )

    def _raise(self, status: int, what: str, retry_after: str) -> None:
        if status == 404:
            raise NotFound(
                f"{what} not found (HTTP 404): check the repository and tag, e.g. with "
                "'kit list' or the registry's web page"
            )
        if status in (401, 403):
            raise AuthenticationError(
                f"access to {what} denied (HTTP {status}): {login_hint(self.registry)}"
            )
        if status in RETRYABLE_STATUS:
            raise TransientError(
                f"registry {self.registry} answered HTTP {status} for {what}: it may be "
                "overloaded or failing",
                retry_after_seconds(retry_after),
            )
        raise RegistryError(f"registry {self.registry} answered HTTP {status} for {what}")


def _at_storage(exc: TransientError, url: str) -> ObjectStorageError:
    """A transport failure at object storage, typed and worded as such (the registry's
    address hints do not apply to a URL the registry gave)."""
    if isinstance(exc, ObjectStorageError):
        return exc
    cause = describe(exc.__cause__) if exc.__cause__ is not None else str(exc)
    return ObjectStorageError(f"object storage {_host(url)} failed: {cause}", exc.retry_after)


async def _read_at_most(response: httpx.Response, limit: int, url: str) -> None:
    """Read a document's body, refusing one over ``limit`` bytes before holding it: a hostile
    or broken registry must not make the daemon take gigabytes."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(url, int(declared), limit)
    response.stream = _Capped(response.stream, limit, url)
    await response.aread()


class _Capped(httpx.AsyncByteStream):
    def __init__(
        self, stream: httpx.AsyncByteStream | httpx.SyncByteStream, limit: int, url: str
    ) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self.stream, self.limit, self.url = stream, limit, url

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self.stream:
            size += len(chunk)
            if size > self.limit:
                raise _too_large(self.url, size, self.limit)
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


def _too_large(url: str, size: int, limit: int) -> RegistryError:
    return RegistryError(
        f"{url} sent a document of more than {limit} bytes ({size} at least): manifests and "
        "configs are far smaller; this is not a ModelKit, or the registry is broken"
    )


def _check_manifest(response: httpx.Response, identifier: str, what: str) -> Manifest:
    raw = response.content
    if identifier.startswith("sha256:"):
        digest = identifier
        verify(raw, digest, f"manifest {what}")
    else:
        digest = sha256_digest(raw)
        claimed = response.headers.get("Docker-Content-Digest")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise DigestMismatch(
                f"manifest of {what} does not match the digest the registry announced "
                f"({claimed}): try again or report it to the registry owner"
            )
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    return Manifest(digest=digest, media_type=media_type, raw=raw)


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _host(url: str) -> str:
    return httpx.URL(url).netloc.decode("ascii")
