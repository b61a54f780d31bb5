"""Signatures read through the registry client, as a registry serves them: the referrers API,
its 404 and the fallback tag, and layer blobs checked against their digests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from modelkitfs.primitives.digests import sha256_digest
from modelkitfs.registry.testing import MemoryRegistry
from modelkitfs.signing import SignatureRefused, verify_digest
from modelkitfs.signing.candidates import MAX_SIGNATURE_BYTES, MAX_SIGNATURES
from tests.support import cosign
from tests.support.kitbuilder import Artifact
from tests.unit.signing.doubles import KIT, REPOSITORY, key_policy


def registry_with_kit() -> tuple[MemoryRegistry, Artifact]:
    registry = MemoryRegistry()
    kit = Artifact(json.dumps(KIT).encode(), b"")
    registry.push(REPOSITORY, "v1", kit.manifest, kit.media_type, {})
    return registry, kit


def push(registry: MemoryRegistry, artifact: Artifact, tag: str) -> None:
    registry.push(REPOSITORY, tag, artifact.manifest, artifact.media_type, artifact.blobs)


def verify(registry: MemoryRegistry, kit: Artifact, policy) -> list:
    async def main() -> list:
        client = registry.client()
        try:
            verdict = await verify_digest(
                client, "reg.test/team/kit", REPOSITORY, kit.digest, policy
            )
        finally:
            await client.aclose()
        return verdict.signers

    return trio.run(main)


def test_without_a_referrers_api_the_fallback_tag_is_read(tmp_path: Path) -> None:
    key = cosign.new_key()
    registry, kit = registry_with_kit()
    referrer = cosign.referrer(kit, cosign.bundle(kit.digest, key))
    push(registry, referrer, "unused")
    push(registry, cosign.referrers_index([referrer]), cosign.fallback_tag(kit.digest))
    assert verify(registry, kit, key_policy(tmp_path, key, ignore_tlog=True))
    asked = [p for p in registry.documents if "referrers" in p or "sha256-" in p]
    assert asked == [
        f"/v2/{REPOSITORY}/manifests/{cosign.signature_tag(kit.digest)}",
        f"/v2/{REPOSITORY}/referrers/{kit.digest}",
        f"/v2/{REPOSITORY}/manifests/{cosign.fallback_tag(kit.digest)}",
    ]


def test_the_referrers_api_is_read_when_there_is_one(tmp_path: Path) -> None:
    key = cosign.new_key()
    registry, kit = registry_with_kit()
    referrer = cosign.referrer(kit, cosign.bundle(kit.digest, key))
    push(registry, referrer, "unused")
    index = cosign.referrers_index([referrer])
    registry.manifests[f"/v2/{REPOSITORY}/referrers/{kit.digest}"] = (
        index.manifest,
        index.media_type,
    )
    assert verify(registry, kit, key_policy(tmp_path, key, ignore_tlog=True))
    assert f"/v2/{REPOSITORY}/manifests/{cosign.fallback_tag(kit.digest)}" not in registry.documents


def test_a_payload_that_is_not_its_digest_does_not_count(tmp_path: Path) -> None:
    key = cosign.new_key()
    registry, kit = registry_with_kit()
    signatures = cosign.signature_manifest([cosign.classic(kit.digest, key)])
    digest = next(d for d, b in signatures.blobs.items() if b != signatures.config)
    signatures.blobs[digest] = signatures.blobs[digest].replace(b"critical", b"CRITICAL")
    push(registry, signatures, cosign.signature_tag(kit.digest))
    with pytest.raises(SignatureRefused, match=r"its payload cannot be read .*does not match"):
        verify(registry, kit, key_policy(tmp_path, key, ignore_tlog=True))


def test_a_signature_manifest_costs_a_bounded_number_of_requests(tmp_path: Path) -> None:
    """A .sig manifest may list thousands of layers (cosign reads 50 at most): each check
    fetches MAX_SIGNATURES payloads at most, not one per layer."""
    registry, kit = registry_with_kit()
    layers = [cosign.classic(kit.digest, cosign.new_key()) for _ in range(MAX_SIGNATURES + 8)]
    push(registry, cosign.signature_manifest(layers), cosign.signature_tag(kit.digest))
    with pytest.raises(SignatureRefused, match=f"none of its {MAX_SIGNATURES} signatures"):
        verify(registry, kit, key_policy(tmp_path, cosign.new_key(), ignore_tlog=True))
    assert len([path for path in registry.documents if "/blobs/" in path]) == MAX_SIGNATURES


def test_a_signature_naming_a_digest_that_is_no_sha256_is_refused_alone(tmp_path: Path) -> None:
    """A layer or referrer named by another algorithm, whose bytes could not be checked, is
    refused alone and never asked for (a registry would answer it); the valid signature beside
    it counts."""
    key = cosign.new_key()
    registry, kit = registry_with_kit()
    md5, sha512 = "md5:" + "ab" * 16, "sha512:" + "cd" * 64
    signatures = cosign.signature_manifest([cosign.classic(kit.digest, key)])
    manifest = json.loads(signatures.manifest)
    manifest["layers"].insert(0, {**manifest["layers"][0], "digest": md5})
    signatures.manifest = json.dumps(manifest).encode()
    push(registry, signatures, cosign.signature_tag(kit.digest))
    registry.push(REPOSITORY, "unused", b"{}", "", {md5: b"payload"})
    referrer = cosign.referrer(kit, cosign.bundle(kit.digest, key))
    push(registry, referrer, "unused")
    registry.manifests[f"/v2/{REPOSITORY}/manifests/{sha512}"] = (referrer.manifest, "")
    index = cosign.referrers_index([referrer])
    listed = json.loads(index.manifest)
    listed["manifests"].insert(0, {**listed["manifests"][0], "digest": sha512})
    index.manifest = json.dumps(listed).encode()
    push(registry, index, cosign.fallback_tag(kit.digest))
    signers = verify(registry, kit, key_policy(tmp_path, key, ignore_tlog=True))
    assert [signer.format for signer in signers] == ["classic", "bundle"]
    assert not [path for path in registry.documents if md5 in path or sha512 in path]


def test_a_signature_blob_larger_than_a_signature_is_never_fetched(tmp_path: Path) -> None:
    """A payload or bundle is a few KiB: one whose descriptor says more is refused alone and
    never fetched (each check would hold it in memory, the node service one per kit named)."""
    key = cosign.new_key()
    registry, kit = registry_with_kit()
    big = b" " * (MAX_SIGNATURE_BYTES + 1)
    big_digest = sha256_digest(big)
    registry.push(REPOSITORY, "unused", b"{}", "", {big_digest: big})
    large = {"mediaType": cosign.SIMPLESIGNING, "digest": big_digest, "size": len(big)}
    signatures = cosign.signature_manifest([cosign.classic(kit.digest, key)])
    manifest = json.loads(signatures.manifest)
    manifest["layers"].insert(0, {**large, "annotations": manifest["layers"][0]["annotations"]})
    signatures.manifest = json.dumps(manifest).encode()
    push(registry, signatures, cosign.signature_tag(kit.digest))
    referrer = cosign.referrer(kit, cosign.bundle(kit.digest, key))
    document = json.loads(referrer.manifest)
    document["layers"][0] = {**large, "mediaType": cosign.BUNDLE_TYPE}
    large_referrer = Artifact(json.dumps(document).encode(), b"{}", referrer.blobs)
    for artifact in (referrer, large_referrer):
        push(registry, artifact, "unused")
    push(
        registry,
        cosign.referrers_index([large_referrer, referrer]),
        cosign.fallback_tag(kit.digest),
    )
    signers = verify(registry, kit, key_policy(tmp_path, key, ignore_tlog=True))
    assert [signer.format for signer in signers] == ["classic", "bundle"]
    assert not [path for path in registry.documents if big_digest in path]
