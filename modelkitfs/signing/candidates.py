"""What a signature found beside a manifest claims, before anyone trusts it: the bytes it
signs, the signature, the certificate and log entry it carries, and what is already wrong with
it (a payload for another manifest, a malformed annotation). The two formats cosign writes,
:mod:`.classic` and :mod:`.bundles`, each make these; :mod:`.verifier` judges them alike."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from modelkitfs.primitives.digests import is_sha256
from modelkitfs.registry.source import Manifest
from modelkitfs.signing.rekor import LogEntry

# Signatures read per manifest and format, at most (cosign reads 50): whoever can push beside
# a kit must not make each check of it cost thousands of requests and verifications.
MAX_SIGNATURES = 32
MAX_SIGNATURE_BYTES = 256 * 1024  # a payload or bundle blob, at most: they take a few KiB


class SignatureStore(Protocol):
    """Where signatures are read: the kit's own source (a registry client: credentials,
    mirrors and retries as for the kit)."""

    async def get_manifest(self, repository: str, identifier: str) -> Manifest: ...

    async def get_blob(self, repository: str, digest: str, size: int | None = None) -> bytes: ...

    async def referrers(self, repository: str, digest: str) -> Manifest | None:
        """The referrers API's index for ``digest``; None where the source has no such API."""
        ...


class Documents(Protocol):
    async def get_manifest(self, repository: str, identifier: str) -> Manifest: ...

    async def get_blob(self, repository: str, digest: str, size: int | None = None) -> bytes: ...


class WithoutReferrers:
    """A source with no referrers API (an OCI layout, kit's storage): bundles are found by
    the fallback tag alone."""

    def __init__(self, source: Documents) -> None:
        self.source = source

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        return await self.source.get_manifest(repository, identifier)

    async def get_blob(self, repository: str, digest: str, size: int | None = None) -> bytes:
        return await self.source.get_blob(repository, digest, size)

    async def referrers(self, repository: str, digest: str) -> Manifest | None:
        return None


@dataclass(frozen=True)
class Candidate:
    kind: str  # "classic" (a .sig layer) or "bundle" (a sigstore bundle)
    where: str  # which signature, for messages
    signed: bytes = b""  # what the signature covers
    logged: bytes = b""  # what the log entry hashes (the payload)
    signature: bytes = b""
    certificate: x509.Certificate | None = None
    entry: LogEntry | None = None
    entry_problem: str | None = None  # why the log entry could not be read
    problem: str | None = None  # why it cannot count at all


class Unverifiable(ValueError):
    """A signature's blob or manifest that is not asked for: named by no sha256 digest (what a
    registry sends for it could not be checked), or larger than any signature."""


def sha256_named(digest: object) -> str:
    """``digest``, a sha256 digest (else :class:`Unverifiable`)."""
    if not is_sha256(text := str(digest)):
        raise Unverifiable(f"{text[:24]!r} is no sha256 digest")
    return text


def fetchable(descriptor: dict[str, Any]) -> tuple[str, int]:
    """The digest and size of the signature blob ``descriptor`` names, if worth fetching (else
    :class:`Unverifiable`): a check holds each in memory."""
    size = descriptor.get("size")
    if not isinstance(size, int) or not 0 <= size <= MAX_SIGNATURE_BYTES:
        raise Unverifiable(
            f"its size {str(size)[:24]} is no signature's (<= {MAX_SIGNATURE_BYTES})"
        )
    return sha256_named(descriptor.get("digest")), size


def broken(kind: str, where: str, problem: str) -> Candidate:
    return Candidate(kind, where, problem=problem)


def b64(text: object) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


def certificate(pem: bytes | None) -> x509.Certificate | None:
    """The first certificate of ``pem`` (ValueError when it holds none)."""
    return None if not pem else x509.load_pem_x509_certificates(pem)[0]
