"""Content digests, written once: naming bytes by digest and checking bytes against one.

Every layer names content by digest (manifests, configs, layers, decompressed layers, cache
directories), so the check lives here: sha256, the only algorithm the OCI image spec requires
and the only one kit writes.
"""

from __future__ import annotations

import hashlib

from modelkitfs.errors import DigestMismatch, RegistryError


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
