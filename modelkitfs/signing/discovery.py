"""Where the signatures of a manifest stand and how they are fetched, for both formats cosign
writes: what a registry is asked, in one place, apart from what the documents say.

Both formats stand under a tag named after the manifest's digest, ``sha256-<hex>``: classic
signatures at ``sha256-<hex>.sig``, an image manifest of signature layers (:mod:`.classic`
reads each); sigstore bundles are referrers of the manifest, listed by the registry's referrers
API or, where that answers 404 (CNCF Distribution 2.8 has none), by the fallback tag itself, an
index of referrers (:mod:`.bundles` reads each bundle). Each referrer must name the manifest as
its ``subject``. Every blob is read through the kit's own source, which checks it against its
descriptor's digest, and at most ``MAX_SIGNATURES`` of each format: a signature that cannot be
read is one broken signature, not the end of the check.
"""

from __future__ import annotations

from modelkitfs.errors import DigestMismatch, NotFound
from modelkitfs.registry.source import Manifest
from modelkitfs.signing.bundles import ARTIFACT_TYPE, BUNDLE_MEDIA_TYPE, from_bundle
from modelkitfs.signing.candidates import (
    MAX_SIGNATURES,
    Candidate,
    SignatureStore,
    Unverifiable,
    broken,
    fetchable,
    sha256_named,
)
from modelkitfs.signing.canonical import parse_json
from modelkitfs.signing.classic import LAYER_TYPE, from_layer

# What reading one signature's manifest or blob fails with: that signature is broken.
UNREADABLE = (DigestMismatch, NotFound, Unverifiable)


async def gather(store: SignatureStore, repository: str, digest: str) -> list[Candidate]:
    """Every signature found beside ``digest``: classic ones, then bundles."""
    return [
        *await classic_signatures(store, repository, digest),
        *await bundle_signatures(store, repository, digest),
    ]


def digest_tag(digest: str, suffix: str = "") -> str:
    """The tag of what stands beside manifest ``digest``: ``sha256-<hex>`` and a suffix."""
    return digest.replace(":", "-") + suffix


def signature_tag(digest: str) -> str:
    """Where cosign's classic signatures of ``digest`` stand."""
    return digest_tag(digest, ".sig")


async def classic_signatures(
    store: SignatureStore, repository: str, digest: str
) -> list[Candidate]:
    tag = signature_tag(digest)
    manifest = await _tagged(store, repository, tag)
    if manifest is None:
        return []
    try:
        layers = parse_json(manifest.raw)["layers"]
        listed = [(n, d) for n, d in enumerate(layers, 1) if d.get("mediaType") == LAYER_TYPE]
    except (ValueError, KeyError, TypeError, AttributeError):
        return [broken("classic", tag, "its manifest is malformed")]
    found = []
    for number, descriptor in listed[:MAX_SIGNATURES]:
        where = f"{tag} layer {number}"
        try:
            payload = await store.get_blob(repository, *fetchable(descriptor))
        except UNREADABLE as exc:
            found.append(broken("classic", where, f"its payload cannot be read ({exc})"))
            continue
        found.append(from_layer(payload, descriptor.get("annotations") or {}, digest, where))
    return found


async def bundle_signatures(store: SignatureStore, repository: str, digest: str) -> list[Candidate]:
    index = await store.referrers(repository, digest)
    if index is None:
        index = await _tagged(store, repository, digest_tag(digest))
    if index is None:
        return []
    try:
        listed = parse_json(index.raw).get("manifests") or []
        digests = [str(d["digest"]) for d in listed if d.get("artifactType") == ARTIFACT_TYPE]
    except (ValueError, KeyError, TypeError, AttributeError):
        return [broken("bundle", f"the referrers of {digest}", "their index is malformed")]
    found: list[Candidate] = []
    for referrer in digests[:MAX_SIGNATURES]:
        found += await _referrer(store, repository, digest, referrer)
    return found


async def _referrer(
    store: SignatureStore, repository: str, digest: str, referrer: str
) -> list[Candidate]:
    where = f"bundle {referrer[:19]}"
    try:
        manifest = parse_json((await store.get_manifest(repository, sha256_named(referrer))).raw)
        if (manifest.get("subject") or {}).get("digest") != digest:
            return [broken("bundle", where, "its subject is another manifest")]
        layer = next(
            d for d in manifest["layers"] if str(d["mediaType"]).startswith(BUNDLE_MEDIA_TYPE)
        )
        raw = await store.get_blob(repository, *fetchable(layer))
    except UNREADABLE as exc:
        return [broken("bundle", where, f"it cannot be read ({exc})")]
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration):
        return [broken("bundle", where, "its manifest holds no sigstore bundle layer")]
    return from_bundle(raw, digest, where)


async def _tagged(store: SignatureStore, repository: str, tag: str) -> Manifest | None:
    """The manifest tagged ``tag``; None when there is none: no signature of that kind."""
    try:
        return await store.get_manifest(repository, tag)
    except NotFound:
        return None
