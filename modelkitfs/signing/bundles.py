"""Sigstore bundles (cosign v3's default): an OCI 1.1 referrer of the kit's manifest whose one
layer is a bundle v0.3 holding a DSSE envelope (:mod:`.discovery` finds the referrers and
fetches each bundle; this module reads what it says).

The envelope's payload is an in-toto statement with cosign's signing predicate whose subject is
the manifest digest (cosign accepts any verified bundle, attestations included; this is
stricter: an attestation is not a signature). Its one signature (sigstore's bundles hold one)
covers DSSE's pre-authentication encoding; the key is given by the policy, or the certificate
by the bundle; the log entry is its first ``tlogEntries``.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

from modelkitfs.signing.candidates import Candidate, b64, broken
from modelkitfs.signing.canonical import parse_json
from modelkitfs.signing.rekor import Refusal, from_tlog_entry

ARTIFACT_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle"
IN_TOTO = "application/vnd.in-toto+json"
PREDICATE = "https://sigstore.dev/cosign/sign/v1"


def from_bundle(raw: bytes, digest: str, where: str) -> list[Candidate]:
    """The signatures of sigstore bundle ``raw``, as signatures of manifest ``digest``."""
    try:
        bundle = parse_json(raw)
        envelope = bundle["dsseEnvelope"]
        material = bundle["verificationMaterial"]
        payload_type, payload = str(envelope["payloadType"]), b64(envelope["payload"])
        signatures = [b64(s["sig"]) for s in envelope["signatures"]]
    except (ValueError, KeyError, TypeError):
        return [broken("bundle", where, "it is no sigstore bundle with a DSSE envelope")]
    if not str(bundle.get("mediaType", "")).startswith(BUNDLE_MEDIA_TYPE):
        return [broken("bundle", where, "it is no sigstore bundle (mediaType)")]
    if not isinstance(material, dict):
        return [broken("bundle", where, "its verificationMaterial is no mapping")]
    if (held := len(signatures)) != 1:  # as sigstore's bundle format requires
        return [broken("bundle", where, f"its DSSE envelope holds {held} signatures, not one")]
    if problem := statement_problem(payload_type, payload, digest):
        return [broken("bundle", where, problem)]
    try:
        leaf = _certificate(material)
    except (ValueError, KeyError, TypeError, AttributeError):
        return [broken("bundle", where, "its certificate cannot be read")]
    entry, entry_problem = None, None
    entries = material.get("tlogEntries") or []
    if entries:
        try:
            entry = from_tlog_entry(entries[0] if isinstance(entries, list) else None)
        except Refusal as exc:
            entry_problem = str(exc)
    signed = pae(payload_type, payload)
    return [Candidate("bundle", where, signed, payload, signatures[0], leaf, entry, entry_problem)]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding, what a DSSE signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def statement_problem(payload_type: str, payload: bytes, digest: str) -> str | None:
    """Why the envelope's payload is no cosign signature statement of ``digest``, if not."""
    if payload_type != IN_TOTO:
        return f"its payload is a {payload_type!r}, not an in-toto statement"
    try:
        statement = parse_json(payload)
        subjects = [str(s["digest"]["sha256"]) for s in statement["subject"]]
        predicate = statement["predicateType"]
    except (ValueError, KeyError, TypeError):
        return "its payload is no in-toto statement with subjects"
    if predicate != PREDICATE:
        return f"it is a {predicate!r} attestation, not a cosign signature"
    if digest.removeprefix("sha256:") not in subjects:
        return f"its statement is about {', '.join(subjects) or 'nothing'}, not {digest}"
    return None


def _certificate(material: dict[str, Any]) -> x509.Certificate | None:
    if "certificate" in material:
        der = b64(material["certificate"]["rawBytes"])
    elif "x509CertificateChain" in material:
        der = b64(material["x509CertificateChain"]["certificates"][0]["rawBytes"])
    else:
        return None
    return x509.load_der_x509_certificate(der)
