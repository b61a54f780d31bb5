"""HTTP access to one registry with the OCI distribution API.

One :class:`RegistryClient` per registry host holds one connection pool (connections are reused
across every blob of every repository), a bound on requests in flight, and the auth state. It
knows nothing of caches or tar: it hands back verified manifests and the raw bytes of blob ranges.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import trio

from modelkitfs.errors import AuthenticationError, DigestMismatch, NotFound, RegistryError
from modelkitfs.registry.auth import Authenticator, login_hint
from modelkitfs.registry.credentials import Credential, find_credential
from modelkitfs.registry.ranges import RangeFetcher, RangeResult
from modelkitfs.registry.retry import MAX_ATTEMPTS, RetryBudget, retry_after_seconds
from modelkitfs.registry.transport import (
    NetworkOptions,
    blocking_ssl_context,
    describe,
    describe_failure,
    endpoint_url,
    make_http_client,
    uses_proxy,
)

log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

MAX_DOCUMENT_SIZE = 4 * 1024 * 1024  # any body read whole: manifests, configs, errors
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MIRROR_RETRY_AFTER = 60.0
# Registries whose API lives on another host than their name (Docker Hub).
API_HOSTS = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}

T = TypeVar("T")
Buffer = bytes | bytearray


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


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify(data: bytes, digest: str, what: str) -> None:
    algorithm, _, _ = digest.partition(":")
    if algorithm != "sha256":
        raise RegistryError(f"{what} uses digest algorithm {algorithm!r}; only sha256 is supported")
    actual = sha256_digest(data)
    if actual != digest:
        raise DigestMismatch(
            f"{what} does not match its digest (expected {digest}, got {actual}): the registry "
            "or a proxy in between corrupted it; try again or report it to the registry owner"
        )


class RegistryClient:
    """Talks to ``registry`` (through its mirrors first, if any), ``max_in_flight`` requests
    at once."""

    def __init__(
        self,
        registry: str,
        options: NetworkOptions | None = None,
        *,
        credentials: Callable[[str], Credential | None] = find_credential,
        max_in_flight: int = 32,
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
        self._redirects: dict[str, str] = {}  # blob digest -> where the registry sent us
        self._resolving: dict[str, trio.Event] = {}  # a stale redirect being resolved again
        self._mirror_down_until: dict[str, float] = {}
        self._limiter = trio.CapacityLimiter(max_in_flight)
        self._http = make_http_client(self.options, max_in_flight * 2)
        # Blob bytes through blocking connections in threads, unless a proxy is in play.
        self._ranges = (
            None
            if uses_proxy(self.options)
            else RangeFetcher(blocking_ssl_context(self.options), self.options.stall_timeout)
        )
        self._threads = trio.CapacityLimiter(max_in_flight)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        """Fetch a manifest or index by tag or digest and verify it."""
        sep = "@" if ":" in identifier else ":"
        what = f"{self.registry}/{repository}{sep}{identifier}"

        async def fetch(base: str) -> Manifest:
            url = self._url(base, f"/v2/{repository}/manifests/{identifier}")
            response = await self._request(
                "GET", url, repository, {"Accept": MANIFEST_ACCEPT}, what
            )
            return _check_manifest(response, identifier, what)

        return await self._via_mirrors(fetch, what)

    async def get_blob(self, repository: str, digest: str, size: int | None = None) -> bytes:
        """Fetch a small blob (a config) whole and verify it."""
        what = f"blob {digest} of {self.registry}/{repository}"

        async def fetch(base: str) -> bytes:
            url = self._url(base, f"/v2/{repository}/blobs/{digest}")
            data = (await self._request("GET", url, repository, {}, what)).content
            if size is not None and len(data) != size:
                raise DigestMismatch(f"{what} has {len(data)} bytes, its descriptor says {size}")
            verify(data, digest, what)
            return data

        data = await self._via_mirrors(fetch, what)
        self.stats.blob_bytes += len(data)
        return data

    async def get_range(self, repository: str, digest: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of a blob; a server that ignores Range is handled."""
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
            retries = MAX_ATTEMPTS if base == self.base_url else 1  # a failing mirror: next
            return await self._range_with_retries(
                base, repository, digest, start, end, piece, what, retries
            )

        pieces = await self._via_mirrors(fetch, what)
        self.stats.ranges += 1
        self.stats.blob_bytes += end - start
        return pieces

    async def _range_with_retries(
        self,
        base: str,
        repository: str,
        digest: str,
        start: int,
        end: int,
        piece: int,
        what: str,
        retries: int,
    ) -> list[Buffer]:
        """The range, retried within the request's budget; a transfer cut short resumes from
        the first byte it lacks."""
        budget = RetryBudget(self.options.timeout, retries)
        pieces: list[Buffer] = []
        position = start
        while True:
            headers = {"Range": f"bytes={position}-{end - 1}"}
            data, resolving = await self._via_redirect(digest, headers, what, position, end, piece)
            try:
                if data is None:
                    url = self._url(base, f"/v2/{repository}/blobs/{digest}")
                    data = await self._read_range(
                        url, repository, headers, what, position, end, piece, digest
                    )
                return pieces + data
            except (httpx.TransportError, _Retryable) as exc:
                failure = exc
                if isinstance(exc, _Partial):
                    pieces += exc.data
                    position += sum(len(p) for p in exc.data)
            finally:
                if resolving is not None:
                    del self._resolving[digest]
                    resolving.set()
            retry_after = failure.retry_after if isinstance(failure, _Retryable) else None
            if not await budget.pause(retry_after):
                if isinstance(failure, httpx.ConnectError):
                    message = describe_failure(_host(base), failure, self.plain_http)
                else:
                    message = f"reading {what} failed ({describe(failure)}); {budget.refusal}"
                raise RegistryError(message) from failure
            log.warning(
                "range %d-%d of %s: %s; retrying (attempt %d)",
                position,
                end,
                digest,
                describe(failure),
                budget.made,
            )

    async def _via_redirect(
        self, digest: str, headers: dict[str, str], what: str, start: int, end: int, piece: int
    ) -> tuple[list[Buffer] | None, trio.Event | None]:
        """The range from where the registry last redirected this blob (object storage URLs
        stay valid a while). Else None, and the caller asks the registry; when a cached URL
        has just failed, also an event the caller sets once it has asked: the first reader to
        notice resolves again, the others wait for it, so a burst costs one redirect."""
        while True:
            if (pending := self._resolving.get(digest)) is not None:
                await pending.wait()
                continue
            location = self._redirects.get(digest)
            if location is None:
                return None, None
            try:
                data = await self._read_range(location, None, headers, what, start, end, piece)
                return data, None
            except RegistryError as exc:
                if self._redirects.get(digest) == location:
                    log.debug("cached redirect for %s failed (%s); resolving again", digest, exc)
                    del self._redirects[digest]
                    self._resolving[digest] = resolving = trio.Event()
                    return None, resolving

    async def _read_range(
        self,
        url: str,
        repository: str | None,
        headers: dict[str, str],
        what: str,
        start: int,
        end: int,
        piece: int,
        digest: str | None = None,
    ) -> list[Buffer]:
        """One range request; ``repository`` None for a URL outside the registry (no auth).
        Raises :class:`_Partial` with the bytes that came when the body stopped short."""
        async with self._limiter:
            if self._ranges is not None:
                result = await self._range_in_thread(url, repository, headers, start, end, piece)
                status, final_url = result.status, result.url
                data: list[Buffer] = list(result.data)
                if status not in (200, 206):
                    self._raise_for_status(status, what, result.retry_after)
                if result.broken:
                    raise _Partial(result.broken, data)
            else:
                status, final_url, body = await self._range_with_httpx(
                    url, repository, headers, what, start, end
                )
                data = [body]
        if digest is not None and _host(final_url) != _host(url):
            self._redirects[digest] = final_url
        if (got := sum(len(p) for p in data)) != end - start:
            raise _Partial(f"short read of {got} of {end - start} bytes", data)
        return data

    async def _range_in_thread(
        self,
        url: str,
        repository: str | None,
        headers: dict[str, str],
        start: int,
        end: int,
        piece: int,
    ) -> RangeResult:
        assert self._ranges is not None
        scope = f"repository:{repository}:pull"
        auth = self._authenticator(url) if repository is not None else None
        for attempt in range(2):
            sent = {**headers, **(auth.header_for(scope) if auth else {})}
            self.stats.requests += 1
            try:
                result = await trio.to_thread.run_sync(
                    self._ranges.fetch, url, sent, start, end, piece, limiter=self._threads
                )
            except (OSError, http.client.HTTPException) as exc:
                raise httpx.ReadError(describe(exc)) from exc  # retried like any transport error
            if result.status != 401 or auth is None:
                return result
            if attempt == 1:
                raise auth.refused(scope)
            await auth.authenticate(self._http, result.challenge, scope)
        raise AssertionError("unreachable")

    async def _range_with_httpx(
        self,
        url: str,
        repository: str | None,
        headers: dict[str, str],
        what: str,
        start: int,
        end: int,
    ) -> tuple[int, str, bytes]:
        if repository is None:
            self.stats.requests += 1
            request = self._http.build_request("GET", url, headers=headers)
            response = await self._http.send(request, stream=True)
        else:
            response = await self._send("GET", url, repository, headers, stream=True)
        try:
            if response.status_code == 206:
                data = await response.aread()
            elif response.status_code == 200:
                data = await _slice_stream(response, start, end)
            else:
                await response.aread()
                self._raise_for_status(
                    response.status_code, what, response.headers.get("Retry-After", "")
                )
        finally:
            await response.aclose()
        return response.status_code, str(response.url), data

    async def _via_mirrors(self, fetch: Callable[[str], Awaitable[T]], what: str) -> T:
        """``fetch`` from each mirror in turn, then from the registry itself. A mirror that
        cannot be reached is left alone for a while; one that lacks the content is not."""
        for mirror in self.mirrors:
            if self._mirror_down_until.get(mirror, 0.0) > trio.current_time():
                continue
            try:
                return await fetch(mirror)
            except (RegistryError, httpx.TransportError) as exc:
                log.info("mirror %s: %s; trying the next source", mirror, describe(exc))
                if isinstance(exc, httpx.TransportError) or "cannot reach" in str(exc):
                    self._mirror_down_until[mirror] = trio.current_time() + MIRROR_RETRY_AFTER
        return await fetch(self.base_url)

    def _url(self, base: str, path: str) -> str:
        if base == self.base_url:
            return base + path
        return f"{base}{path}?ns={self.registry}"  # containerd's mirror convention

    async def _request(
        self, method: str, url: str, repository: str, headers: dict[str, str], what: str
    ) -> httpx.Response:
        budget = RetryBudget(self.options.timeout)
        while True:
            retry_after = None
            try:
                async with self._limiter:
                    response = await self._send(method, url, repository, headers, stream=False)
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.ConnectError) or not await budget.pause():
                    raise RegistryError(describe_failure(_host(url), exc, self.plain_http)) from exc
                continue
            if response.status_code in RETRYABLE_STATUS:
                retry_after = retry_after_seconds(response.headers.get("Retry-After", ""))
                if await budget.pause(retry_after):
                    continue
            if response.status_code != 200:
                self._raise_for_status(response.status_code, what, retry_after)
            return response

    def _authenticator(self, url: str) -> Authenticator:
        host = _host(url)
        if host not in self._auth:
            self._auth[host] = Authenticator(host, self._credentials)
        return self._auth[host]

    async def _send(
        self, method: str, url: str, repository: str, headers: dict[str, str], *, stream: bool
    ) -> httpx.Response:
        """Send with auth: answer a 401 challenge once, then send again."""
        scope = f"repository:{repository}:pull"
        auth = self._authenticator(url)
        for attempt in range(2):
            request = self._http.build_request(
                method, url, headers={**headers, **auth.header_for(scope)}
            )
            self.stats.requests += 1
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
            if attempt == 1:
                raise auth.refused(scope)
            await auth.authenticate(self._http, response.headers.get("WWW-Authenticate", ""), scope)
        raise AssertionError("unreachable")

    async def _follow(self, response: httpx.Response, headers: dict[str, str]) -> httpx.Response:
        """Follow blob redirects (object storage, CDNs) without our Authorization header."""
        for _ in range(5):
            location = response.headers.get("Location")
            await response.aclose()
            if not location:
                raise RegistryError(f"registry {self.registry} sent a redirect with no Location")
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
        raise RegistryError(f"registry {self.registry} redirected more than 5 times")

    def _raise_for_status(
        self, status: int, what: str, retry_after: str | float | None = None
    ) -> None:
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
            if isinstance(retry_after, str):
                retry_after = retry_after_seconds(retry_after)
            raise _Retryable(
                f"registry {self.registry} answered HTTP {status} for {what}: it may be "
                "overloaded or failing; try again later",
                retry_after,
            )
        raise RegistryError(f"registry {self.registry} answered HTTP {status} for {what}")


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


class _Retryable(RegistryError):
    """A transient failure worth another attempt, after ``retry_after`` seconds if the server
    said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Partial(_Retryable):
    """A range whose body stopped short: ``data`` is what came, to resume after."""

    def __init__(self, message: str, data: list[Buffer]) -> None:
        super().__init__(message)
        self.data = data


async def _slice_stream(response: httpx.Response, start: int, end: int) -> bytes:
    """Take ``[start, end)`` out of a whole-body answer without holding the rest in memory."""
    parts: list[bytes] = []
    position = 0
    async for chunk in response.aiter_bytes():
        chunk_end = position + len(chunk)
        if chunk_end > start and position < end:
            parts.append(chunk[max(start - position, 0) : min(end - position, len(chunk))])
        position = chunk_end
        if position >= end:
            break
    return b"".join(parts)


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


def _host(url: str) -> str:
    return httpx.URL(url).netloc.decode("ascii")
