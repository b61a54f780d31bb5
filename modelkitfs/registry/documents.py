"""Documents: manifests and configs, fetched whole, capped in size, checked against digests.

A document is small and read in one piece, unlike a layer blob's ranges. It travels over httpx
(one GET with auth, redirects followed without our credentials off the registry's host), its
body is refused past :data:`MAX_DOCUMENT_SIZE` before it is held
(a hostile or broken registry must not make the daemon take gigabytes), and it is believed only
once it hashes to the digest that names it, or, fetched by tag, to the digest the registry
announced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import trio

from modelkitfs.errors import DigestMismatch, RegistryError, TransientError
from modelkitfs.primitives import digests
from modelkitfs.registry.auth import Authenticator
from modelkitfs.registry.network import transport_failure
from modelkitfs.registry.redirects import MAX_REDIRECTS
from modelkitfs.registry.source import FetchStats, Manifest
from modelkitfs.registry.status import host

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
MAX_DOCUMENT_SIZE = 4 * 1024 * 1024


async def get_document(
    http: httpx.AsyncClient,
    auth: Authenticator,
    url: str,
    scope: str,
    headers: dict[str, str],
    stats: FetchStats,
    *,
    registry: str,
    plain_http: bool,
) -> httpx.Response:
    """GET ``url`` with auth (a 401 challenge is answered once, then the request sent again),
    its body read whole, up to ``MAX_DOCUMENT_SIZE``. Any status is returned but a second 401;
    a failed connection is a typed error."""
    for attempt in range(2):
        sent = {**headers, **await auth.header(http, scope)}
        stats.requests += 1
        sent_at = trio.current_time()
        try:
            response = await http.send(http.build_request("GET", url, headers=sent), stream=True)
            if response.is_redirect:
                response = await _follow(http, response, headers, stats, registry)
            if response.status_code != 401:
                try:
                    await _read_at_most(response, MAX_DOCUMENT_SIZE, url)
                finally:
                    await response.aclose()
                stats.answered(response.status_code, trio.current_time() - sent_at)
                return response
            await response.aclose()
            stats.answered(401, trio.current_time() - sent_at)
        except httpx.TransportError as exc:
            raise transport_failure(host(url), exc, plain_http) from exc
        if attempt == 1:
            raise auth.refused(scope)
        challenge = response.headers.get("WWW-Authenticate", "")
        await auth.authenticate(http, challenge, scope, sent.get("Authorization"))
    raise AssertionError("unreachable")


async def _follow(
    http: httpx.AsyncClient,
    response: httpx.Response,
    headers: dict[str, str],
    stats: FetchStats,
    registry: str,
) -> httpx.Response:
    """Follow a document's redirects without our Authorization header off the host."""
    for _ in range(MAX_REDIRECTS):
        location = response.headers.get("Location")
        await response.aclose()
        if not location:
            raise TransientError(f"registry {registry} sent a redirect with no Location")
        target = response.url.join(location)
        # Only the Range header goes along: credentials are for the registry host alone.
        forward = {k: v for k, v in headers.items() if k.lower() == "range"}
        if target.host == response.url.host and target.port == response.url.port:
            forward = dict(response.request.headers)
        stats.requests += 1
        response = await http.send(http.build_request("GET", target, headers=forward), stream=True)
        if not response.is_redirect:
            return response
    raise RegistryError(f"registry {registry} redirected more than {MAX_REDIRECTS} times")


async def _read_at_most(response: httpx.Response, limit: int, url: str) -> None:
    """Read a document's body, refusing one over ``limit`` bytes before holding it."""
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


def check_manifest(response: httpx.Response, identifier: str, what: str) -> Manifest:
    """The manifest in ``response`` to a request for ``identifier`` (a tag or a digest),
    verified against the digest asked for, or else against the one the registry announced."""
    raw = response.content
    if ":" in identifier:  # a digest (a tag has no colon)
        digest = identifier
        digests.verify(raw, digest, f"manifest {what}")
    else:
        digest = digests.sha256_digest(raw)
        claimed = response.headers.get("Docker-Content-Digest")
        if claimed and digests.is_sha256(claimed) and claimed != digest:
            raise DigestMismatch(
                f"manifest of {what} does not match the digest the registry announced "
                f"({claimed}): try again or report it to the registry owner"
            )
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    return Manifest(digest=digest, media_type=media_type, raw=raw)


def check_blob(data: bytes, digest: str, size: int | None, what: str) -> bytes:
    """``data``, once it has the ``size`` its descriptor gives and hashes to ``digest``."""
    if size is not None and len(data) != size:
        raise DigestMismatch(f"{what} has {len(data)} bytes, its descriptor says {size}")
    digests.verify(data, digest, what)
    return data
