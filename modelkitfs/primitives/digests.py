"""Content digests, written once: their grammar, naming bytes by digest, checking bytes.

Every layer names content by digest (manifests, configs, layers, decompressed layers, cache
directories), and a digest from a manifest ends up in URLs and file paths, so its grammar and
its check live here: the OCI image spec's grammar (``algorithm:encoded``, the algorithm with
``+._-`` separators, as this package's derived names use: ``sha256+zstd``), and sha256, the only
algorithm the spec requires and the only one kit writes.
"""

from __future__ import annotations

import hashlib
import re

from modelkitfs.errors import DigestMismatch, RegistryError

# OCI image spec, descriptor.md: algorithm ":" encoded; at least 32 characters encoded.
DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")


def is_digest(text: str) -> bool:
    """Whether ``text`` is a digest by the OCI grammar (any algorithm)."""
    return DIGEST.fullmatch(text) is not None


def is_sha256(text: str) -> bool:
    """Whether ``text`` is a well-formed sha256 digest."""
    return _SHA256.fullmatch(text) is not None


def sha256_digest(data: bytes | bytearray | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify(data: bytes, digest: str, what: str) -> None:
    """Raise :class:`DigestMismatch` unless ``data`` hashes to ``digest``."""
    algorithm, _, _ = digest.partition(":")
    if algorithm != "sha256":
        raise RegistryError(f"{what} uses digest algorithm {algorithm!r}; only sha256 is supported")
    actual = sha256_digest(data)
    if actual != digest:
        raise DigestMismatch(
            f"{what} does not match its digest (expected {digest}, got {actual}): the registry "
            "or a proxy in between corrupted it; try again or report it to the registry owner"
        )
