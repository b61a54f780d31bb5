"""Signatures laid out exactly as cosign lays them out, made here with ``cryptography``: classic
``sha256-<hex>.sig`` manifests (one simplesigning layer per signature, the signature and the
keyless material as annotations), sigstore bundles v0.3 as OCI referrers behind the fallback
tag, a test Fulcio (root and intermediate CAs issuing ten-minute code-signing certificates), a
test Rekor (signed entry timestamps over RFC 8785 JSON, hashedrekord and dsse bodies) and the
``trusted_root.json`` that names them. Written from cosign's formats, not from modelkitfs's
code, so that the tests check one against the other.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.kitbuilder import OCI_MANIFEST, Artifact, sha256

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_public(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(public_pem(key))
    return path


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def payload(name: str, digest: str, optional: dict[str, str] | None = None) -> bytes:
    """Go's json.Marshal of cosign's simplesigning payload."""
    document = {
        "critical": {
            "identity": {"docker-reference": name},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": optional,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def statement(digest: str, predicate_type: str = "https://sigstore.dev/cosign/sign/v1") -> bytes:
    document = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": predicate_type,
        "predicate": {},
    }
    return json.dumps(document, separators=(",", ":")).encode()


def pae(payload_type: str, body: bytes) -> bytes:
    kind = payload_type.encode()
    return (
        b"DSSEv1 "
        + str(len(kind)).encode()
        + b" "
        + kind
        + b" "
        + str(len(body)).encode()
        + b" "
        + body
    )


# --- the transparency log ---------------------------------------------------------------------


@dataclass
class Rekor:
    key: ec.EllipticCurvePrivateKey = field(default_factory=new_key)
    index: int = 0

    @property
    def log_id(self) -> str:
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()

    def entry(self, body: dict[str, Any] | bytes, when: datetime.datetime = NOW) -> dict[str, Any]:
        """The log's promise for ``body`` (a document, or its bytes as they are): cosign's
        bundle annotation's shape."""
        self.index += 1
        raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        promised = {
            "body": b64(raw),
            "integratedTime": int(when.timestamp()),
            "logID": self.log_id,
            "logIndex": self.index,
        }
        canonical = json.dumps(promised, sort_keys=True, separators=(",", ":")).encode()
        return {"SignedEntryTimestamp": b64(sign(self.key, canonical)), "Payload": promised}


def hashedrekord(signed: bytes, signature: bytes, signer_pem: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(signed).hexdigest()}},
            "signature": {"content": b64(signature), "publicKey": {"content": b64(signer_pem)}},
        },
    }


def dsse_body(body: bytes, signature: bytes, signer_pem: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(body).hexdigest()},
            "signatures": [{"signature": b64(signature), "verifier": b64(signer_pem)}],
        },
    }


# --- the certificate authority ----------------------------------------------------------------


def _name(text: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sigstore.test"),
            x509.NameAttribute(NameOID.COMMON_NAME, text),
        ]
    )


def _ca(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, Any] | None
) -> x509.Certificate:
    name = _name(subject)
    issuer_name, issuer_key = issuer or (name, key)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=30))
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(issuer_key, hashes.SHA384())
    )


@dataclass
class Fulcio:
    root_key: ec.EllipticCurvePrivateKey = field(default_factory=new_key)
    key: ec.EllipticCurvePrivateKey = field(default_factory=new_key)

    def __post_init__(self) -> None:
        self.root = _ca("sigstore", self.root_key, None)
        self.intermediate = _ca(
            "sigstore-intermediate", self.key, (self.root.subject, self.root_key)
        )

    def issue(
        self,
        identity: str,
        issuer: str,
        *,
        at: datetime.datetime = NOW,
        code_signing: bool = True,
        issuer_v1: bool = False,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A ten-minute certificate for ``identity`` (an email, else a URI) from ``issuer``."""
        key = new_key()
        san: x509.GeneralName = (
            x509.RFC822Name(identity)
            if "@" in identity and "://" not in identity
            else x509.UniformResourceIdentifier(identity)
        )
        if issuer_v1:
            extension = x509.UnrecognizedExtension(ISSUER_V1, issuer.encode())
        else:
            encoded = issuer.encode()
            extension = x509.UnrecognizedExtension(ISSUER_V2, bytes([0x0C, len(encoded)]) + encoded)
        usage = (
            ExtendedKeyUsageOID.CODE_SIGNING if code_signing else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(at)
            .not_valid_after(at + datetime.timedelta(minutes=10))
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(extension, critical=False)
            .sign(self.key, hashes.SHA384())
        )
        return key, cert

    @property
    def chain_pem(self) -> bytes:
        return cert_pem(self.intermediate) + cert_pem(self.root)


def trusted_root(path: Path, fulcio: Fulcio | None = None, rekor: Rekor | None = None) -> Path:
    """sigstore's trusted_root.json naming ``fulcio``'s CA chain and ``rekor``'s key."""
    start = (NOW - datetime.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    document: dict[str, Any] = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [],
        "certificateAuthorities": [],
        "ctlogs": [],
        "timestampAuthorities": [],
    }
    if rekor is not None:
        der = rekor.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        document["tlogs"].append(
            {
                "baseUrl": "https://rekor.sigstore.test",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": b64(der),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": start},
                },
                "logId": {"keyId": b64(bytes.fromhex(rekor.log_id))},
            }
        )
    if fulcio is not None:
        document["certificateAuthorities"].append(
            {
                "subject": {"organization": "sigstore.test", "commonName": "sigstore"},
                "uri": "https://fulcio.sigstore.test",
                "certChain": {
                    "certificates": [
                        {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER))}
                        for c in (fulcio.intermediate, fulcio.root)
                    ]
                },
                "validFor": {"start": start},
            }
        )
    path.write_text(json.dumps(document, indent=2))
    return path


# --- how signatures are stored in a registry --------------------------------------------------


@dataclass
class Layer:
    """One classic signature: the payload blob and its descriptor's annotations."""

    payload: bytes
    annotations: dict[str, str]


def classic(
    digest: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    name: str = "registry.test/team/kit",
    signed_digest: str | None = None,
    rekor: Rekor | None = None,
    cert: x509.Certificate | None = None,
    chain: bytes = b"",
    when: datetime.datetime = NOW,
) -> Layer:
    """What 'cosign sign' adds for ``digest`` (``signed_digest``: a payload naming another),
    signed by ``key``; keyless with ``cert``; logged in ``rekor``."""
    body = payload(name, signed_digest or digest)
    signature = sign(key, body)
    annotations = {"dev.cosignproject.cosign/signature": b64(signature)}
    signer_pem = public_pem(key)
    if cert is not None:
        signer_pem = cert_pem(cert)
        annotations["dev.sigstore.cosign/certificate"] = signer_pem.decode()
        annotations["dev.sigstore.cosign/chain"] = chain.decode()
    if rekor is not None:
        entry = rekor.entry(hashedrekord(body, signature, signer_pem), when)
        annotations["dev.sigstore.cosign/bundle"] = json.dumps(entry)
    return Layer(body, annotations)


def signature_manifest(layers: list[Layer]) -> Artifact:
    """The manifest at ``sha256-<hex>.sig``: an empty config and one layer per signature."""
    config = b"{}"
    blobs = {sha256(config): config}
    descriptors = []
    for layer in layers:
        blobs[sha256(layer.payload)] = layer.payload
        descriptors.append(
            {
                "mediaType": SIMPLESIGNING,
                "size": len(layer.payload),
                "digest": sha256(layer.payload),
                "annotations": layer.annotations,
            }
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": sha256(config)},
        "layers": descriptors,
    }
    return Artifact(json.dumps(manifest, separators=(",", ":")).encode(), config, blobs)


def signature_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def bundle(
    digest: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    rekor: Rekor | None = None,
    cert: x509.Certificate | None = None,
    predicate_type: str = "https://sigstore.dev/cosign/sign/v1",
    when: datetime.datetime = NOW,
) -> bytes:
    """cosign v3's sigstore bundle v0.3 for ``digest``: a DSSE envelope of an in-toto
    statement, signed by ``key`` (keyless with ``cert``), with its log entry if ``rekor``."""
    body = statement(digest, predicate_type)
    signature = sign(key, pae("application/vnd.in-toto+json", body))
    material: dict[str, Any] = (
        {"certificate": {"rawBytes": b64(cert.public_bytes(serialization.Encoding.DER))}}
        if cert is not None
        else {"publicKey": {"hint": "test key"}}
    )
    material["tlogEntries"] = []
    if rekor is not None:
        signer_pem = cert_pem(cert) if cert is not None else public_pem(key)
        entry = rekor.entry(dsse_body(body, signature, signer_pem), when)
        promised = entry["Payload"]
        material["tlogEntries"].append(
            {
                "logIndex": str(promised["logIndex"]),
                "logId": {"keyId": b64(bytes.fromhex(promised["logID"]))},
                "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                "integratedTime": str(promised["integratedTime"]),
                "inclusionPromise": {"signedEntryTimestamp": entry["SignedEntryTimestamp"]},
                "canonicalizedBody": promised["body"],
            }
        )
    document = {
        "mediaType": BUNDLE_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": b64(body),
            "payloadType": "application/vnd.in-toto+json",
            "signatures": [{"sig": b64(signature)}],
        },
    }
    return json.dumps(document).encode()


def referrer(subject: Artifact, bundle_json: bytes) -> Artifact:
    """The OCI 1.1 referrer holding ``bundle_json``, its subject the kit's manifest."""
    empty = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_TYPE,
        "config": {"mediaType": OCI_EMPTY, "size": len(empty), "digest": sha256(empty)},
        "layers": [
            {"mediaType": BUNDLE_TYPE, "size": len(bundle_json), "digest": sha256(bundle_json)}
        ],
        "subject": {
            "mediaType": subject.media_type,
            "size": len(subject.manifest),
            "digest": subject.digest,
        },
    }
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    return Artifact(raw, empty, {sha256(empty): empty, sha256(bundle_json): bundle_json})


def referrers_index(referrers: list[Artifact]) -> Artifact:
    """The index at the fallback tag ``sha256-<hex>`` listing ``referrers``."""
    manifests = [
        {
            "mediaType": OCI_MANIFEST,
            "size": len(r.manifest),
            "digest": r.digest,
            "artifactType": BUNDLE_TYPE,
        }
        for r in referrers
    ]
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
    return Artifact(raw, b"", {}, OCI_INDEX)


def fallback_tag(digest: str) -> str:
    return digest.replace(":", "-")
