"""Keyless signers: a Fulcio certificate, checked at the time the log says it signed.

The leaf must have been issued by a certificate authority of the trusted root (the first
certificate of one of its chains; the chain itself is the trusted root's, never the one the
signature carries) that was valid then, be valid itself then (Fulcio's certificates last ten
minutes), allow digital signatures and code signing, and name the expected identity in its SAN
(an email, a URI or an otherName) and the expected OIDC issuer in Fulcio's extension
1.3.6.1.4.1.57264.1.8 (a DER UTF8String) or, in older certificates, 1.3.6.1.4.1.57264.1.1 (the
raw string).
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from modelkitfs.signing.policy import Identity
from modelkitfs.signing.rekor import Refusal
from modelkitfs.signing.trust import TrustedRoot

ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
UTF8_STRING = 0x0C


def check_certificate(leaf: x509.Certificate, root: TrustedRoot, moment: datetime.datetime) -> None:
    """Refuse unless ``leaf`` is a code-signing certificate of a CA of ``root``, valid at
    ``moment``."""
    when = _time(moment)
    if not _valid_at(leaf, moment):
        start, end = _time(leaf.not_valid_before_utc), _time(leaf.not_valid_after_utc)
        raise Refusal(
            f"its certificate was not valid when it signed (valid {start} to {end}, signed {when})"
        )
    if not any(
        authority.window.holds(moment) and _issued_by(leaf, authority.chain, moment)
        for authority in root.authorities
    ):
        raise Refusal(
            f"its certificate was not issued by a certificate authority of the trusted root "
            f"valid at {when}"
        )
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        signs = leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    except x509.ExtensionNotFound:
        usage, signs = None, False
    if usage is None or ExtendedKeyUsageOID.CODE_SIGNING not in usage or not signs:
        raise Refusal("its certificate is not for code signing")


def _time(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}Z"


def _valid_at(certificate: x509.Certificate, moment: datetime.datetime) -> bool:
    return certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc


def _issued_by(
    leaf: x509.Certificate, chain: tuple[x509.Certificate, ...], moment: datetime.datetime
) -> bool:
    issuer = chain[0]
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        leaf.verify_directly_issued_by(issuer)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
        return False
    return constraints.ca and all(_valid_at(c, moment) for c in chain)


def matching(leaf: x509.Certificate, identities: tuple[Identity, ...]) -> Identity | None:
    """The first of ``identities`` the certificate names, if any."""
    subjects, issuer = names(leaf)
    return next((i for i in identities if i.matches(subjects, issuer)), None)


def names(leaf: x509.Certificate) -> tuple[list[str], str | None]:
    """The identities in the certificate's SAN, and its OIDC issuer."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], _issuer(leaf)
    subjects: list[str] = [
        *san.get_values_for_type(x509.RFC822Name),
        *san.get_values_for_type(x509.UniformResourceIdentifier),
    ]
    for other in san.get_values_for_type(x509.OtherName):
        if (text := _utf8_string(other.value)) is not None:
            subjects.append(text)
    return subjects, _issuer(leaf)


def _issuer(leaf: x509.Certificate) -> str | None:
    for oid, encoded in ((ISSUER_V2, True), (ISSUER_V1, False)):
        try:
            value = leaf.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        return _utf8_string(raw) if encoded else raw.decode(errors="replace")
    return None


def _utf8_string(der: bytes) -> str | None:
    """The text of a DER UTF8String (None for anything else)."""
    if len(der) < 2 or der[0] != UTF8_STRING:
        return None
    length, start = der[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, start = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    if start + length != len(der):
        return None
    return der[start:].decode(errors="replace")
