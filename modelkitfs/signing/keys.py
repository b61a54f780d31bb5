"""Public keys as cosign writes them (PEM ``PUBLIC KEY``), and the one signature check that every
kind of signature shares.

cosign signs with ECDSA P-256 and SHA-256 by default; RSA keys sign PKCS#1 v1.5 with SHA-256;
sigstore also knows P-384 and P-521 (with the hash of their size) and Ed25519. A key is named
by the sha256 of its DER SubjectPublicKeyInfo, as Rekor names its log (``logID``) and as a user
can recompute it from the key file.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

_CURVE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


class BadKey(ValueError):
    """Bytes that are no public key this package checks signatures with."""


def load_public_key(pem: bytes) -> PublicKey:
    """The key of a PEM ``PUBLIC KEY`` block (or of a certificate's PEM, for its key)."""
    key: object
    try:
        if b"CERTIFICATE" in pem:
            key = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadKey(f"not a PEM public key ({exc})") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in _CURVE_HASHES:
        raise BadKey(f"an ECDSA key on curve {key.curve.name}, which sigstore does not use")
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise BadKey(f"a {type(key).__name__}: give an ECDSA, RSA or Ed25519 public key")
    return key


def key_der(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: PublicKey) -> str:
    """The hex sha256 of the key's DER SubjectPublicKeyInfo (Rekor's ``logID``)."""
    return hashlib.sha256(key_der(key)).hexdigest()


def fingerprint(key: PublicKey) -> str:
    """How a key is named to a user: ``sha256:`` and its :func:`key_id`."""
    return f"sha256:{key_id(key)}"


def signature_valid(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` (ASN.1 DER for ECDSA) is ``key``'s over ``data``."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(_CURVE_HASHES[key.curve.name]()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
