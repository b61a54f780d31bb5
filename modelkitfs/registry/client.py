"""HTTP access to one registry with the OCI distribution API.

One :class:`RegistryClient` per registry host holds one connection pool (connections are reused
across every blob of every repository), a bound on requests in flight, and the auth state. It
knows nothing of caches or tar: it hands back verified manifests and the raw bytes of blob ranges.
"""

from __future__ import annotations

import hashlib
import logging
import random
import ssl
from dataclasses import dataclass

import httpx
import trio

from modelkitfs.errors import AuthenticationError, DigestMismatch, NotFound, RegistryError
from modelkitfs.registry.auth import TokenAuth

log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
RETRIES = 4
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


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
    """Talks to ``registry`` over HTTPS (or plain HTTP when asked), ``max_in_flight`` at once."""

    def __init__(
        self,
        registry: str,
        *,
        plain_http: bool = False,
        max_in_flight: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.registry = registry
        self.base_url = f"{'http' if plain_http else 'https'}://{registry}"
        self.plain_http = plain_http
        self.stats = FetchStats()
        self._auth = TokenAuth(registry)
        self._limiter = trio.CapacityLimiter(max_in_flight)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_in_flight * 2, max_keepalive_connections=max_in_flight * 2
            ),
            follow_redirects=False,
            headers={"User-Agent": "modelkitfs"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        """Fetch a manifest or index by tag or digest and verify it."""
        url = f"{self.base_url}/v2/{repository}/manifests/{identifier}"
        what = (
            f"{self.registry}/{repository}:{identifier}"
            if ":" not in identifier
            else (f"{self.registry}/{repository}@{identifier}")
        )
        response = await self._request("GET", url, repository, {"Accept": MANIFEST_ACCEPT}, what)
        raw = response.content
        if len(raw) > MAX_MANIFEST_SIZE:
            raise RegistryError(f"manifest of {what} is larger than {MAX_MANIFEST_SIZE} bytes")
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

    async def get_blob(self, repository: str, digest: str, size: int | None = None) -> bytes:
        """Fetch a small blob (a config) whole and verify it."""
        what = f"blob {digest} of {self.registry}/{repository}"
        response = await self._request(
            "GET", self._blob_url(repository, digest), repository, {}, what
        )
        data = response.content
        if size is not None and len(data) != size:
            raise DigestMismatch(f"{what} has {len(data)} bytes, its descriptor says {size}")
        verify(data, digest, what)
        self.stats.blob_bytes += len(data)
        return data

    async def get_range(self, repository: str, digest: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of a blob; a server that ignores Range is handled."""
        what = f"blob {digest} of {self.registry}/{repository}"
        headers = {"Range": f"bytes={start}-{end - 1}"}
        url = self._blob_url(repository, digest)
        for attempt in range(RETRIES):
            try:
                data = await self._read_range(url, repository, headers, what, start, end)
            except (httpx.TransportError, _Retryable) as exc:
                if attempt == RETRIES - 1:
                    raise RegistryError(
                        f"reading {what} failed after {RETRIES} attempts: {_describe(exc)}"
                    ) from exc
                delay = _backoff(attempt)
                log.warning(
                    "range %d-%d of %s failed (%s); retrying in %.1fs",
                    start,
                    end,
                    digest,
                    _describe(exc),
                    delay,
                )
                await trio.sleep(delay)
                continue
            self.stats.ranges += 1
            self.stats.blob_bytes += len(data)
            return data
        raise AssertionError("unreachable")

    async def _read_range(
        self, url: str, repository: str, headers: dict[str, str], what: str, start: int, end: int
    ) -> bytes:
        async with self._limiter:
            response = await self._send("GET", url, repository, headers, stream=True)
            try:
                if response.status_code == 206:
                    data = await response.aread()
                elif response.status_code == 200:
                    data = await _slice_stream(response, start, end)
                else:
                    await response.aread()
                    self._raise_for(response, what)
            finally:
                await response.aclose()
        if len(data) != end - start:
            raise _Retryable(f"short read: got {len(data)} of {end - start} bytes")
        return data

    def _blob_url(self, repository: str, digest: str) -> str:
        return f"{self.base_url}/v2/{repository}/blobs/{digest}"

    async def _request(
        self, method: str, url: str, repository: str, headers: dict[str, str], what: str
    ) -> httpx.Response:
        for attempt in range(RETRIES):
            try:
                async with self._limiter:
                    response = await self._send(method, url, repository, headers, stream=False)
            except httpx.TransportError as exc:
                if attempt == RETRIES - 1 or isinstance(exc, httpx.ConnectError):
                    raise RegistryError(self._unreachable(exc)) from exc
                await trio.sleep(_backoff(attempt))
                continue
            if response.status_code in RETRYABLE_STATUS and attempt < RETRIES - 1:
                await trio.sleep(_backoff(attempt))
                continue
            if response.status_code != 200:
                self._raise_for(response, what)
            return response
        raise AssertionError("unreachable")

    async def _send(
        self, method: str, url: str, repository: str, headers: dict[str, str], *, stream: bool
    ) -> httpx.Response:
        """Send with auth: answer one 401 challenge, then send again."""
        scope = f"repository:{repository}:pull"
        for _ in range(2):
            request = self._http.build_request(
                method, url, headers={**headers, **self._auth.header_for(scope)}
            )
            self.stats.requests += 1
            response = await self._http.send(request, stream=True)
            if response.is_redirect:
                response = await self._follow(response, headers)
            if response.status_code != 401:
                if not stream:
                    try:
                        await response.aread()
                    finally:
                        await response.aclose()
                return response
            await response.aclose()
            challenge = response.headers.get("WWW-Authenticate", "")
            self._auth.forget(scope)
            await self._auth.authenticate(self._http, challenge, scope)
        return response

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

    def _raise_for(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status == 404:
            raise NotFound(
                f"{what} not found (HTTP 404): check the repository and tag, e.g. with "
                "'kit list' or the registry's web page"
            )
        if status in (401, 403):
            raise AuthenticationError(
                f"access to {what} denied (HTTP {status}): log in with 'kit login {self.registry}'"
            )
        if status in RETRYABLE_STATUS:
            raise _Retryable(
                f"registry {self.registry} answered HTTP {status} for {what}: it may be "
                "overloaded or failing; try again later"
            )
        raise RegistryError(f"registry {self.registry} answered HTTP {status} for {what}")

    def _unreachable(self, exc: Exception) -> str:
        text = f"cannot reach registry {self.registry}: {_describe(exc)}"
        if not self.plain_http and any(isinstance(e, ssl.SSLError) for e in _chain(exc)):
            return text + "; if it serves plain HTTP, pass --plain-http"
        return text + "; check the address and that the registry is running"


class _Retryable(RegistryError):
    """A transient failure worth another attempt."""


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


def _backoff(attempt: int) -> float:
    """Exponential backoff with jitter, capped at a few seconds."""
    return min(0.2 * 2**attempt, 2.0) * (0.5 + random.random())


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _describe(exc: BaseException) -> str:
    """The most telling message along the exception's causes."""
    for error in _chain(exc):
        if text := str(error).strip():
            return text.splitlines()[0]
    return type(exc).__name__
