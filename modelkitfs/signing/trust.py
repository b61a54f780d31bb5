"""sigstore's ``trusted_root.json``: the Fulcio CAs and Rekor logs a keyless signature (and a
key signature's log entry) must chain to, each valid for a window of time.

The file is the user's (``--trusted-root FILE``); nothing is fetched. Only what a check needs is
read: each CA's chain (intermediates first, root last) and its ``validFor``, each log's public
key and ``validFor``. A log is named by the sha256 of its key, computed here rather than taken
from the file's ``logId``, so that a wrong id cannot pair an entry with another key.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from modelkitfs.signing.keys import BadKey, PublicKey, key_id, load_public_key

MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json"


class BadTrustedRoot(ValueError):
    """A trusted root that cannot be read: the message says what is wrong in it."""


@dataclass(frozen=True)
class Window:
    """When a CA or log key may be relied on (``None``: open-ended)."""

    start: datetime.datetime | None
    end: datetime.datetime | None

    def holds(self, moment: datetime.datetime) -> bool:
        return (self.start is None or self.start <= moment) and (
            self.end is None or moment <= self.end
        )


@dataclass(frozen=True)
class LogKey:
    key: PublicKey
    key_id: str  # hex sha256 of the key's DER
    window: Window


@dataclass(frozen=True)
class Authority:
    """A certificate authority: its chain, intermediates first and its root last."""

    chain: tuple[x509.Certificate, ...]
    window: Window


@dataclass(frozen=True)
class TrustedRoot:
    logs: tuple[LogKey, ...]
    authorities: tuple[Authority, ...]

    def log(self, log_id: str, moment: datetime.datetime) -> LogKey | None:
        """The log key named ``log_id`` (hex) that was valid at ``moment``."""
        for log in self.logs:
            if log.key_id == log_id.lower() and log.window.holds(moment):
                return log
        return None


def parse_trusted_root(raw: bytes) -> TrustedRoot:
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise BadTrustedRoot(f"it is not JSON ({exc})") from None
    if not isinstance(document, dict) or not str(document.get("mediaType", "")).startswith(
        MEDIA_TYPE
    ):
        raise BadTrustedRoot(f"it is no sigstore trusted root (mediaType {MEDIA_TYPE})")
    logs = tuple(_log(entry) for entry in _list(document, "tlogs"))
    authorities = tuple(_authority(entry) for entry in _list(document, "certificateAuthorities"))
    if not logs and not authorities:
        raise BadTrustedRoot("it names no transparency log and no certificate authority")
    return TrustedRoot(logs, authorities)


def _log(entry: Any) -> LogKey:
    public = entry.get("publicKey") if isinstance(entry, dict) else None
    if not isinstance(public, dict):
        raise BadTrustedRoot("a tlogs entry has no publicKey")
    der = _bytes(public.get("rawBytes"), "a log's publicKey.rawBytes")
    try:
        key = load_public_key(
            serialization.load_der_public_key(der).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    except (ValueError, BadKey) as exc:
        raise BadTrustedRoot(f"a log's public key cannot be read ({exc})") from None
    window = _window(public.get("validFor"), "a log's publicKey")
    return LogKey(key, key_id(key), window)


def _authority(entry: Any) -> Authority:
    chain = entry.get("certChain") if isinstance(entry, dict) else None
    certificates = chain.get("certificates") if isinstance(chain, dict) else None
    if not isinstance(certificates, list) or not certificates:
        raise BadTrustedRoot("a certificateAuthorities entry has no certChain.certificates")
    try:
        parsed = tuple(
            x509.load_der_x509_certificate(_bytes(c.get("rawBytes"), "a CA certificate"))
            for c in certificates
        )
    except (ValueError, AttributeError) as exc:
        raise BadTrustedRoot(f"a CA certificate cannot be read ({exc})") from None
    return Authority(parsed, _window(entry.get("validFor"), "a certificate authority"))


def _list(document: dict[str, Any], key: str) -> list[Any]:
    value = document.get(key) or []
    if not isinstance(value, list):
        raise BadTrustedRoot(f"its {key!r} is not a list")
    return value


def _bytes(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise BadTrustedRoot(f"{what} is not base64") from None


def _window(value: Any, what: str) -> Window:
    if not isinstance(value, dict) or not value.get("start"):
        raise BadTrustedRoot(f"{what} has no validFor.start")
    return Window(timestamp(value["start"], what), timestamp(value.get("end"), what))


_FRACTION = re.compile(r"\.(\d{1,6})\d*")


def timestamp(text: Any, what: str) -> datetime.datetime | None:
    """An RFC 3339 time (``2021-01-12T11:53:27.000Z``; nanoseconds cut to microseconds)."""
    if text is None:
        return None
    try:
        cleaned = _FRACTION.sub(lambda m: "." + m.group(1).ljust(6, "0"), str(text))
        moment = datetime.datetime.fromisoformat(cleaned.replace("Z", "+00:00"))
    except ValueError:
        raise BadTrustedRoot(f"{what} has a malformed time {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)
