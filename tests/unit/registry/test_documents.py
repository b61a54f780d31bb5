"""Manifests and configs through the client over httpx's MockTransport: verified against the
digest asked for or announced, capped in size before they are held, redirects followed
without credentials off the registry's host, statuses as typed errors."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import trio
import trio.testing

from modelkitfs.errors import AuthenticationError, DigestMismatch, NotFound, RegistryError
from modelkitfs.primitives.digests import sha256_digest
from modelkitfs.registry import NetworkOptions, RegistryClient
from modelkitfs.registry.credentials import Credential
from modelkitfs.registry.documents import MAX_DOCUMENT_SIZE, OCI_MANIFEST
from modelkitfs.registry.testing import MemoryRanges

MANIFEST = b'{"schemaVersion": 2}'
CONFIG = b'{"model": {}}'
Handler = Callable[[httpx.Request], httpx.Response]


def run(handler: Handler, call: Callable[[RegistryClient], object], **client: object) -> object:
    async def main() -> object:
        registry = RegistryClient(
            "reg.test",
            NetworkOptions(plain_http=True, timeout=10),
            transport=MemoryRanges({}),
            http_transport=httpx.MockTransport(handler),
            **{"credentials": lambda host: None, **client},  # type: ignore[arg-type]
        )
        try:
            return await call(registry)  # type: ignore[misc]
        finally:
            await registry.aclose()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def manifest(headers: dict[str, str] | None = None, body: bytes = MANIFEST) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Type": OCI_MANIFEST, **(headers or {})}, content=body
        )

    return handle


def test_a_manifest_by_tag_is_named_by_its_digest() -> None:
    got = run(manifest(), lambda c: c.get_manifest("team/kit", "v1"))
    assert got.digest == sha256_digest(MANIFEST) and got.raw == MANIFEST  # type: ignore[attr-defined]
    assert got.media_type == OCI_MANIFEST  # type: ignore[attr-defined]


def test_a_manifest_unlike_the_announced_digest_is_refused() -> None:
    other = sha256_digest(b"other")
    with pytest.raises(DigestMismatch, match="does not match the digest the registry announced"):
        run(manifest({"Docker-Content-Digest": other}), lambda c: c.get_manifest("team/kit", "v1"))


def test_a_manifest_by_digest_must_hash_to_it() -> None:
    wanted = sha256_digest(b"what was asked for")
    with pytest.raises(DigestMismatch, match="does not match its digest"):
        run(manifest(), lambda c: c.get_manifest("team/kit", wanted))


def test_a_config_of_another_size_is_refused() -> None:
    digest = sha256_digest(CONFIG)
    handler = lambda request: httpx.Response(200, content=CONFIG)  # noqa: E731
    assert run(handler, lambda c: c.get_blob("team/kit", digest, len(CONFIG))) == CONFIG
    with pytest.raises(DigestMismatch, match=f"has {len(CONFIG)} bytes, its descriptor says 3"):
        run(handler, lambda c: c.get_blob("team/kit", digest, 3))


def test_a_document_over_the_cap_is_refused_declared_or_streamed() -> None:
    declared = manifest({"Content-Length": str(MAX_DOCUMENT_SIZE + 1)}, b"")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_DOCUMENT_SIZE // 65536 + 2):
            yield bytes(65536)

    streamed: Handler = lambda request: httpx.Response(200, content=chunks())  # noqa: E731
    for handler in (declared, streamed):
        with pytest.raises(RegistryError, match=f"more than {MAX_DOCUMENT_SIZE} bytes"):
            run(handler, lambda c: c.get_manifest("team/kit", "v1"))


def test_statuses_are_typed_errors_with_what_to_do() -> None:
    with pytest.raises(NotFound, match="check the repository and tag"):
        run(lambda request: httpx.Response(404), lambda c: c.get_manifest("team/kit", "v1"))
    challenge = {"WWW-Authenticate": 'Basic realm="reg"'}
    with pytest.raises(AuthenticationError, match=r"kit login reg\.test"):
        run(lambda r: httpx.Response(401, headers=challenge), lambda c: c.get_manifest("a", "v1"))


def test_a_redirect_off_the_host_carries_no_credentials() -> None:
    seen: list[tuple[str, str | None]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("Authorization")))
        if request.url.host == "cdn.test":
            return httpx.Response(200, content=CONFIG)
        if "Authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="reg"'})
        return httpx.Response(307, headers={"Location": "http://cdn.test/config?sig=1"})

    credential = Credential("user", "secret", "test")
    digest = sha256_digest(CONFIG)
    got = run(handle, lambda c: c.get_blob("team/kit", digest), credentials=lambda host: credential)
    assert got == CONFIG
    basic = "Basic " + base64.b64encode(b"user:secret").decode()
    assert seen == [("reg.test", None), ("reg.test", basic), ("cdn.test", None)]
