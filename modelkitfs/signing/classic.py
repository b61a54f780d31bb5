"""Classic cosign signatures: an image manifest (OCI or Docker media types) with one
``simplesigning`` layer per signature, tagged ``sha256-<hex>.sig`` in the kit's repository
(:mod:`.discovery` fetches it and each layer's blob; this module reads what they say).

The layer blob is the payload, Go's JSON of ``{"critical": {"identity": {"docker-reference"},
"image": {"docker-manifest-digest"}, "type": "cosign container image signature"}, "optional"}``;
the signature (base64 DER) and, for keyless signing, the certificate, chain and Rekor entry are
annotations of the layer's descriptor. The payload must name the manifest digest being checked:
a signature of another manifest is no signature of this one. ``docker-reference`` is not
checked, as cosign does not (a kit copied to another registry keeps its signatures).
"""

from __future__ import annotations

from typing import Any

from modelkitfs.signing.candidates import Candidate, b64, broken, certificate
from modelkitfs.signing.canonical import parse_json
from modelkitfs.signing.rekor import Refusal, from_cosign_annotation

LAYER_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE = "dev.cosignproject.cosign/signature"
CERTIFICATE = "dev.sigstore.cosign/certificate"
BUNDLE = "dev.sigstore.cosign/bundle"
PAYLOAD_TYPE = "cosign container image signature"


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
