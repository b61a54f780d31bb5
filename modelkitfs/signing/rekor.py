"""A transparency-log entry, checked offline: Rekor's promise (its signed entry timestamp) and
that the entry logged is this very signature.

cosign keeps the entry beside a classic signature (the ``dev.sigstore.cosign/bundle``
annotation: ``SignedEntryTimestamp`` and ``Payload`` of ``body``, ``integratedTime``,
``logIndex``, ``logID``); a sigstore bundle keeps it in ``tlogEntries`` (``canonicalizedBody``,
``inclusionPromise.signedEntryTimestamp``...). Either way the timestamp is an ECDSA signature, by
the log named ``logID`` in the trusted root, over the RFC 8785 canonical JSON of the four payload
fields; the entry's time is the signing time a keyless certificate is checked at. The body
(``hashedrekord`` for a classic signature, ``dsse`` for a bundle) must name this signature, the
hash of what it signs, and its key or certificate: a valid entry of another signature is no
entry of this one.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from modelkitfs.signing.canonical import canonical_json, parse_json
from modelkitfs.signing.keys import PublicKey, key_der, signature_valid
from modelkitfs.signing.trust import TrustedRoot

Material = PublicKey | x509.Certificate  # what a signature names as its signer
LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z: the last time a datetime holds


class Refusal(Exception):
    """Why one signature does not count: a phrase for the one-line message."""


@dataclass(frozen=True)
class LogEntry:
    body: str  # base64 of the canonicalized body, as signed
    integrated_time: int
    log_index: int
    log_id: str  # hex sha256 of the log's key
    timestamp: bytes  # the signed entry timestamp

    def __post_init__(self) -> None:
        """ValueError for what no log writes (its checks would fail with a traceback): a body
        and log id that are not base64 and hex, a time no datetime holds."""
        _b64(self.body)
        bytes.fromhex(self.log_id)
        if not 0 <= self.integrated_time <= LAST_SECOND:
            raise ValueError(f"integratedTime {self.integrated_time} is out of range")

    @property
    def moment(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.integrated_time, datetime.timezone.utc)


def from_cosign_annotation(text: str) -> LogEntry:
    """The entry of cosign's ``dev.sigstore.cosign/bundle`` annotation."""
    try:
        document = parse_json(text)
        payload = document["Payload"]
        return LogEntry(
            str(payload["body"]),
            int(payload["integratedTime"]),
            int(payload["logIndex"]),
            str(payload["logID"]),
            _b64(document["SignedEntryTimestamp"]),
        )
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise Refusal(f"its log entry (bundle annotation) is malformed ({exc})") from None


def from_tlog_entry(entry: Any) -> LogEntry:
    """The entry of a sigstore bundle's ``tlogEntries[]``; only one with an inclusion promise
    (a signed entry timestamp) is checked offline."""
    try:
        promise = entry.get("inclusionPromise") or {}
        if not promise.get("signedEntryTimestamp"):
            raise Refusal(
                "its log entry carries no inclusion promise (signed entry timestamp), the only "
                "proof checked offline"
            )
        return LogEntry(
            str(entry["canonicalizedBody"]),
            int(entry["integratedTime"]),
            int(entry["logIndex"]),
            _b64(entry["logId"]["keyId"]).hex(),
            _b64(promise["signedEntryTimestamp"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise Refusal(f"its log entry is malformed ({exc})") from None


def check_entry(entry: LogEntry, root: TrustedRoot) -> datetime.datetime:
    """The time ``entry`` was logged, once its signed entry timestamp verifies against a log
    of ``root`` valid then."""
    log = root.log(entry.log_id, entry.moment)
    if log is None:
        raise Refusal(
            f"its log entry is from log {entry.log_id[:12]}, which the trusted root does not "
            f"hold for {entry.moment:%Y-%m-%d %H:%M:%S}Z"
        )
    signed = canonical_json(
        {
            "body": entry.body,
            "integratedTime": entry.integrated_time,
            "logID": entry.log_id,
            "logIndex": entry.log_index,
        }
    )
    if not signature_valid(log.key, entry.timestamp, signed):
        raise Refusal("its log entry's signed entry timestamp does not verify with the log's key")
    return entry.moment


def check_body(entry: LogEntry, signed: bytes, signature: bytes, signer: Material) -> None:
    """Refuse unless the logged body names ``signature`` over ``signed`` (the payload) by
    ``signer``."""
    try:
        body = parse_json(_b64(entry.body))
        kind, spec = body["kind"], body["spec"]
        if kind == "hashedrekord":
            hashed = spec["data"]["hash"]
            logged = [(spec["signature"]["content"], spec["signature"]["publicKey"]["content"])]
        elif kind == "dsse":
            hashed = spec["payloadHash"]
            logged = [(s["signature"], s["verifier"]) for s in spec["signatures"]]
        else:
            raise Refusal(f"its log entry is a {kind!r} entry, not hashedrekord or dsse")
        digest_matches = hashed["algorithm"] == "sha256" and hashed["value"] == (
            hashlib.sha256(signed).hexdigest()
        )
        names_signature = any(
            _b64(sig) == signature and _same(_b64(material), signer) for sig, material in logged
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Refusal(f"its log entry's body is malformed ({exc})") from None
    if not digest_matches:
        raise Refusal("its log entry is for another payload")
    if not names_signature:
        raise Refusal("its log entry names another signature or signer")


def _same(pem: bytes, signer: Material) -> bool:
    if isinstance(signer, x509.Certificate):
        try:
            return x509.load_pem_x509_certificate(pem) == signer
        except ValueError:
            return False
    try:
        key = serialization.load_pem_public_key(pem)
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == key_der(signer)
    except (ValueError, TypeError):
        return False


def _b64(text: Any) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
