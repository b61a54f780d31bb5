"""A throwaway certificate authority: server and client certificates for TLS tests.

Certificates carry the extensions strict verifiers insist on (Go's crypto/x509 for the registry,
OpenSSL with VERIFY_X509_STRICT for Python clients): a critical basicConstraints and key usage on
the CA, key identifiers on both, SANs and an extended key usage on leaves.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)
SKEW = datetime.timedelta(hours=1)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass
class CA:
    """A self-signed root that issues leaves; its PEM is what clients and servers trust."""

    cert_path: Path
    key_path: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, directory: Path, name: str = "modelkitfs test CA") -> CA:
        """Write ``ca.pem`` and ``ca.key`` under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        key = new_key()
        name_ = _name(name)
        certificate = _builder(name_, name_, key.public_key(), key.public_key(), ca=True).sign(
            key, hashes.SHA256()
        )
        ca = cls(directory / "ca.pem", directory / "ca.key", certificate, key)
        write_cert(certificate, ca.cert_path)
        write_key(key, ca.key_path)
        return ca

    def issue(
        self,
        name: str,
        *,
        hosts: Sequence[str] = ("127.0.0.1", "localhost", "127.0.0.2"),
        client: bool = False,
    ) -> tuple[Path, Path]:
        """Write ``<name>.pem`` and ``<name>.key`` next to the CA; returns their paths.

        A server certificate is valid for ``hosts``; a client certificate (``client=True``) has
        no SANs, only the clientAuth usage.
        """
        key = new_key()
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = _builder(
            _name(name), self.certificate.subject, key.public_key(), self.key.public_key(), ca=False
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if not client:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(host) for host in hosts]), critical=False
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        directory = self.cert_path.parent
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        write_cert(certificate, cert_path)
        write_key(key, key_path)
        return cert_path, key_path


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    issuer_public: ec.EllipticCurvePublicKey,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What every certificate here carries: validity, constraints, key usage, key ids."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
    )
