"""Judging a manifest digest: the signatures found beside it, against the rules of the policy
that cover its repository.

Each covering rule must be satisfied by one signature that one of its authorities accepts: a
key's signature verifies with the key (and, unless ``--insecure-ignore-tlog``, its log entry
verifies against the trusted root and names this signature); a keyless signature's certificate
names an accepted identity, was issued by a CA of the trusted root and was valid when the log
says it signed, and its signature verifies with the certificate's key. A rule in ``warn`` mode
that is not satisfied is a warning; in ``enforce`` mode, the refusal, one line naming why.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from modelkitfs.errors import SignatureRefused
from modelkitfs.signing.candidates import Candidate, SignatureStore
from modelkitfs.signing.certificates import check_certificate, matching, names
from modelkitfs.signing.discovery import gather, signature_tag
from modelkitfs.signing.keys import fingerprint, signature_valid
from modelkitfs.signing.policy import AuthorityType, KeyAuthority, Policy, Rule
from modelkitfs.signing.rekor import LogEntry, Refusal, check_body, check_entry

log = logging.getLogger(__name__)

REASONS_SHOWN = 3
REASON_LENGTH = 300  # characters of one signature's reason shown, at most


@dataclass(frozen=True)
class Signer:
    """One valid signature: who made it, in which format, and when the log says it did."""

    format: str  # classic or bundle
    key: str | None = None  # fingerprint of the policy's key
    key_name: str | None = None
    identity: str | None = None  # keyless: the certificate's identity and issuer
    issuer: str | None = None
    logged_at: str | None = None  # the log entry's time, when it was checked

    def __str__(self) -> str:
        who = (
            f"key {self.key} ({self.key_name})"
            if self.key
            else f"{self.identity} (issuer {self.issuer})"
        )
        logged = f", logged {self.logged_at}" if self.logged_at else ", log not checked"
        return f"{who}, {self.format} signature{logged}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verdict:
    name: str  # registry/repository
    digest: str
    signers: list[Signer] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # rules in warn mode not satisfied


async def signatures_of(store: SignatureStore, repository: str, digest: str) -> dict[str, int]:
    """How many signatures of each format ``digest`` carries (none checked): for ``inspect``."""
    found = await gather(store, repository, digest)
    return {kind: sum(1 for c in found if c.kind == kind) for kind in ("classic", "bundle")}


async def verify_digest(
    store: SignatureStore, name: str, repository: str, digest: str, policy: Policy
) -> Verdict:
    """Judge ``digest`` of ``name`` (``registry/repository``) by ``policy``; raise
    :class:`SignatureRefused` when an enforced rule is not satisfied."""
    rules = policy.rules_for(name)
    if not rules:
        origins = sorted({rule.origin.partition(",")[0] for rule in policy.rules})
        raise SignatureRefused(
            f"{name}@{digest}: no rule of the signature policy covers {name}: add a glob for it "
            f"({', '.join(origins)})"
        )
    candidates = await gather(store, repository, digest)
    verdict = Verdict(name, digest)
    for rule in rules:
        signers, reasons = _satisfy(rule, candidates, policy.ignore_tlog)
        if signers:
            verdict.signers += [s for s in signers if s not in verdict.signers]
            continue
        why = _why(rule, candidates, reasons, digest)
        if rule.mode == "warn":
            log.warning("%s@%s: %s (mode warn: served all the same)", name, digest, why)
            verdict.warnings.append(why)
            continue
        raise SignatureRefused(f"{name}@{digest} is refused by the signature policy: {why}")
    return verdict


def _satisfy(
    rule: Rule, candidates: list[Candidate], ignore_tlog: bool
) -> tuple[list[Signer], list[str]]:
    signers: list[Signer] = []
    reasons: list[str] = []
    for candidate in candidates:
        for authority in rule.authorities:
            try:
                signers.append(accept(candidate, authority, ignore_tlog))
            except Refusal as exc:
                reasons.append(f"{candidate.where}: {exc}")
    return signers, reasons


def _why(rule: Rule, candidates: list[Candidate], reasons: list[str], digest: str) -> str:
    if not candidates:
        return (
            f"it carries no signature (no {signature_tag(digest)} and no sigstore bundle among "
            "its referrers): sign it with 'cosign sign'"
        )
    shown = list(dict.fromkeys(map(_one_line, reasons)))
    more = f"; and {len(shown) - REASONS_SHOWN} more" if len(shown) > REASONS_SHOWN else ""
    count = len(candidates)
    return (
        f"none of its {count} signature{'s' if count > 1 else ''} is by a signer of "
        f"{rule.origin} ({'; '.join(map(str, rule.authorities))}): "
        + "; ".join(shown[:REASONS_SHOWN])
        + more
    )


def _one_line(reason: str) -> str:
    """``reason`` short and on one line: it quotes what whoever pushed a signature wrote, which
    must not forge lines of the log or fill it."""
    cut = reason[:REASON_LENGTH]
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return text + ("..." if len(reason) > REASON_LENGTH else "")


def accept(candidate: Candidate, authority: AuthorityType, ignore_tlog: bool) -> Signer:
    """The signer of ``candidate`` if ``authority`` accepts it; else :class:`Refusal`."""
    if candidate.problem:
        raise Refusal(candidate.problem)
    if isinstance(authority, KeyAuthority):
        if not signature_valid(authority.key, candidate.signature, candidate.signed):
            raise Refusal(f"it is not signed by key {authority.name}")
        logged = None
        if not ignore_tlog:
            if authority.trusted_root is None:
                raise Refusal(
                    "its transparency-log entry cannot be checked offline without --trusted-root "
                    "FILE (or pass --insecure-ignore-tlog, as with cosign)"
                )
            entry = _entry(candidate)
            logged = check_entry(entry, authority.trusted_root)
            check_body(entry, candidate.logged, candidate.signature, authority.key)
        return Signer(
            candidate.kind,
            key=fingerprint(authority.key),
            key_name=authority.name,
            logged_at=logged.isoformat() if logged else None,
        )
    leaf = candidate.certificate
    if leaf is None:
        raise Refusal("it carries no certificate: it is no keyless signature")
    entry = _entry(candidate)
    moment = check_entry(entry, authority.trusted_root)
    # Issued by the trusted root first: anyone's own CA may write a name that the policy's
    # regexps would take quadratic time over.
    check_certificate(leaf, authority.trusted_root, moment)
    identity = matching(leaf, authority.identities)
    if identity is None:
        subjects, issuer = names(leaf)
        raise Refusal(
            f"its certificate is for {', '.join(subjects) or 'no identity'} (issuer "
            f"{issuer or 'none'}), not {' or '.join(map(str, authority.identities))}"
        )
    if not signature_valid(leaf.public_key(), candidate.signature, candidate.signed):  # type: ignore[arg-type]
        raise Refusal("its signature does not verify with its certificate's key")
    check_body(entry, candidate.logged, candidate.signature, leaf)
    subjects, issuer = names(leaf)
    return Signer(
        candidate.kind,
        identity=next(s for s in subjects if identity.matches([s], issuer)),
        issuer=issuer,
        logged_at=moment.isoformat(),
    )


def _entry(candidate: Candidate) -> LogEntry:
    if candidate.entry is None:
        raise Refusal(candidate.entry_problem or "it carries no transparency-log entry")
    return candidate.entry
