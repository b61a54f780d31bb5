"""Classic cosign signatures: tag ``sha256-<hex>.sig`` of the kit's repository, an image
manifest (OCI or Docker media types) with one ``simplesigning`` layer per signature.

The layer blob is the payload, Go's JSON of ``{"critical": {"identity": {"docker-reference"},
"image": {"docker-manifest-digest"}, "type": "cosign container image signature"}, "optional"}``;
the signature (base64 DER) and, for keyless signing, the certificate, chain and Rekor entry are
annotations of the layer's descriptor. The blob is read through the source, which checks it
against the descriptor's digest (sha256: no other is asked for), and at most
``MAX_SIGNATURES`` of them; the payload must name the manifest digest being checked:
a signature of another manifest is no signature of this one. ``docker-reference`` is not
checked, as cosign does not (a kit copied to another registry keeps its signatures).
"""

from __future__ import annotations

from typing import Any

from modelkitfs.errors import DigestMismatch, NotFound
from modelkitfs.signing.candidates import (
    MAX_SIGNATURES,
    Candidate,
    SignatureStore,
    Unverifiable,
    b64,
    broken,
    certificate,
    fetchable,
)
from modelkitfs.signing.canonical import parse_json
from modelkitfs.signing.rekor import Refusal, from_cosign_annotation

LAYER_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE = "dev.cosignproject.cosign/signature"
CERTIFICATE = "dev.sigstore.cosign/certificate"
BUNDLE = "dev.sigstore.cosign/bundle"
PAYLOAD_TYPE = "cosign container image signature"


def signature_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


async def classic_signatures(
    store: SignatureStore, repository: str, digest: str
) -> list[Candidate]:
    tag = signature_tag(digest)
    try:
        manifest = await store.get_manifest(repository, tag)
    except NotFound:
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
        except (DigestMismatch, NotFound, Unverifiable) as exc:
            found.append(broken("classic", where, f"its payload cannot be read ({exc})"))
            continue
        found.append(from_layer(payload, descriptor.get("annotations") or {}, digest, where))
    return found


def from_layer(payload: bytes, annotations: dict[str, Any], digest: str, where: str) -> Candidate:
    """The signature of one layer (its blob ``payload`` and its descriptor's annotations), as
    a signature of the manifest ``digest``."""
    if not isinstance(annotations, dict):
        return broken("classic", where, "its layer's annotations are no mapping")
    if problem := payload_problem(payload, digest):
        return broken("classic", where, problem)
    try:
        signature = b64(annotations[SIGNATURE])
    except (KeyError, ValueError):
        return broken("classic", where, f"it has no base64 {SIGNATURE} annotation")
    try:
        leaf = certificate(str(annotations.get(CERTIFICATE, "")).encode())
    except ValueError:
        return broken("classic", where, "its certificate annotation is no PEM certificate")
    entry, entry_problem = None, None
    if BUNDLE in annotations:
        try:
            entry = from_cosign_annotation(str(annotations[BUNDLE]))
        except Refusal as exc:
            entry_problem = str(exc)
    return Candidate("classic", where, payload, payload, signature, leaf, entry, entry_problem)


def payload_problem(payload: bytes, digest: str) -> str | None:
    """Why ``payload`` is no cosign signature payload for ``digest``, if it is not."""
    try:
        critical = parse_json(payload)["critical"]
        kind = critical["type"]
        signed = critical["image"]["docker-manifest-digest"]
    except (ValueError, KeyError, TypeError):
        return "its payload is no cosign simple-signing payload"
    if kind != PAYLOAD_TYPE:
        return f"its payload is a {kind!r}, not a {PAYLOAD_TYPE!r}"
    if signed != digest:
        return f"its payload signs {signed}, another manifest"
    return None
