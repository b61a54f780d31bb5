"""Who may sign which kits: the policy a kit is checked against, from cosign's flags or a
policy file, loaded once and named by a digest of its content.

The flags are cosign's and kit's init container's (``--verify-key FILE``, repeatable;
``--certificate-identity`` or ``--certificate-identity-regexp`` with
``--certificate-oidc-issuer``; ``--trusted-root FILE``; ``--insecure-ignore-tlog``): one rule
covering every kit. A policy file (``--policy FILE``, for ``serve`` and the CSI plugin) holds
sigstore policy-controller's ClusterImagePolicy specs, one per YAML document (the whole object,
or its ``spec``): ``images[].glob``, ``authorities[]`` each ``key`` (``data`` or ``path``) or
``keyless`` (``identities[]`` of ``issuer``/``issuerRegExp`` and ``subject``/``subjectRegExp``,
``trustedRoot``), and ``mode: enforce|warn``. Every rule whose glob covers a kit must be
satisfied, by any one of its authorities; a kit no rule covers is refused.

Globs name repositories (``registry.example/team/*``, ``**``): a tag or a digest is never
trusted, the signature binds the digest. A registry is matched by one name, however a
reference spells it (``Registry.Example.:443`` is ``registry.example``; Docker Hub's three
names are ``docker.io``), or a kit named otherwise would escape its registry's rules. The
policy's digest covers what it trusts (keys, identities, trusted roots, modes), not where the
files were, so a pass remembered under it (:mod:`.remembered`) is checked again when any of
that changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import hashes

from modelkitfs.errors import ModelKitFSError
from modelkitfs.reference import DEFAULT_REGISTRY, LAYOUT_PREFIX
from modelkitfs.signing.keys import BadKey, PublicKey, key_id, load_public_key
from modelkitfs.signing.trust import BadTrustedRoot, TrustedRoot, parse_trusted_root

MODES = ("enforce", "warn")
COMMAND_LINE = "the command line"
KEY_FIELDS = {"data", "path", "trustedRoot"}
KEYLESS_FIELDS = {"identities", "trustedRoot", "url", "ctlog"}
IDENTITY_FIELDS = {"issuer", "issuerRegExp", "subject", "subjectRegExp"}
# What is not checked here (attestations, CUE/Rego policies...) is refused, never ignored.
SPEC_FIELDS = {"images", "authorities", "mode", "match"}
AUTHORITY_FIELDS = {"name", "key", "keyless", "ctlog"}
DOCKER_HUB = {"index.docker.io", "registry-1.docker.io"}  # docker.io by its other names
_HOST = re.compile(r"(.*?)\.*(:[0-9]+)?")  # a host, its trailing dots, its port


class PolicyError(ModelKitFSError):
    """A signature option or policy file that cannot be used: the message names it."""


@dataclass(frozen=True)
class Identity:
    """A keyless signer: the certificate's SAN and OIDC issuer, each exact or a regexp (found
    anywhere in the value, as cosign's Go regexps are: anchor with ^ and $)."""

    subject: str | None = None
    subject_regexp: str | None = None
    issuer: str | None = None
    issuer_regexp: str | None = None

    def matches(self, subjects: Sequence[str], issuer: str | None) -> bool:
        return any(_fits(s, self.subject, self.subject_regexp) for s in subjects) and (
            issuer is not None and _fits(issuer, self.issuer, self.issuer_regexp)
        )

    def __str__(self) -> str:
        subject = self.subject or f"~{self.subject_regexp}"
        return f"{subject} from {self.issuer or f'~{self.issuer_regexp}'}"


def _fits(value: str, exact: str | None, pattern: str | None) -> bool:
    return value == exact if exact is not None else re.search(pattern or "", value) is not None


@dataclass(frozen=True)
class KeyAuthority:
    key: PublicKey
    name: str  # the key file, for messages
    trusted_root: TrustedRoot | None  # to check the log entry; None: only --insecure-ignore-tlog

    def __str__(self) -> str:
        return f"key {self.name}"


@dataclass(frozen=True)
class KeylessAuthority:
    identities: tuple[Identity, ...]
    trusted_root: TrustedRoot

    def __str__(self) -> str:
        return "keyless " + " or ".join(map(str, self.identities))


AuthorityType = KeyAuthority | KeylessAuthority


@dataclass(frozen=True)
class Rule:
    globs: tuple[str, ...]
    authorities: tuple[AuthorityType, ...]
    mode: str  # enforce or warn
    origin: str  # where it was written, for messages

    @cached_property
    def _patterns(self) -> tuple[re.Pattern[str], ...]:
        return tuple(_glob_pattern(canonical_name(glob)) for glob in self.globs)

    def covers(self, name: str) -> bool:
        """Whether ``name`` (``registry/repository``) is one of this rule's images."""
        return any(pattern.fullmatch(canonical_name(name)) for pattern in self._patterns)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    ignore_tlog: bool
    digest: str  # of what it trusts: passes are remembered under it

    def rules_for(self, name: str) -> list[Rule]:
        return [rule for rule in self.rules if rule.covers(name)]


def canonical_name(name: str) -> str:
    """``registry/repository`` with the registry named as it is reached: host names are
    case-insensitive, a trailing dot and https's port 443 name the same host, and docker.io
    answers to three names. A layout's folder is a path: kept as it is; and ``localhost``
    alone names kit's local storage, not a registry listening on this machine."""
    if name.startswith(LAYOUT_PREFIX):
        return name
    host, slash, repository = name.partition("/")
    match = _HOST.fullmatch(host.lower())
    assert match is not None  # any text is a host
    hostname, port = match[1], match[2] or ""
    port = "" if port == ":443" else port
    if hostname == DEFAULT_REGISTRY and host != DEFAULT_REGISTRY:
        hostname, port = host.lower(), ""
    if hostname in DOCKER_HUB and not port:
        hostname = "docker.io"
    return f"{hostname}{port}{slash}{repository}"


def _glob_pattern(glob: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*|\*|\?)", glob)
    wildcards = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def load_policy(
    verify_keys: Sequence[str] = (),
    identity: str | None = None,
    identity_regexp: str | None = None,
    issuer: str | None = None,
    trusted_root: str | None = None,
    ignore_tlog: bool = False,
    policy_file: str | None = None,
) -> Policy | None:
    """The policy these options describe (None: no option, no check)."""
    root = _trusted_root(trusted_root, "--trusted-root") if trusted_root else None
    rules: list[Rule] = []
    authorities: list[AuthorityType] = [
        KeyAuthority(_key(value, f"--verify-key {value}"), value, root) for value in verify_keys
    ]
    if identity or identity_regexp or issuer:
        authorities.append(_flag_keyless(identity, identity_regexp, issuer, root))
    if authorities:
        rules.append(Rule(("**",), tuple(authorities), "enforce", COMMAND_LINE))
    if policy_file:
        rules += _policy_file(policy_file, root)
    if not rules:
        if trusted_root or ignore_tlog:
            flag = "--trusted-root" if trusted_root else "--insecure-ignore-tlog"
            raise PolicyError(
                f"{flag} says how to check signatures, but no signer is given: add "
                "--verify-key FILE or --certificate-identity with --certificate-oidc-issuer"
            )
        return None
    described = {
        "rules": [_describe(rule) for rule in rules],
        "ignore_tlog": ignore_tlog,
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    return Policy(tuple(rules), ignore_tlog, f"sha256:{digest}")


def _flag_keyless(
    identity: str | None, identity_regexp: str | None, issuer: str | None, root: TrustedRoot | None
) -> KeylessAuthority:
    if identity and identity_regexp:
        raise PolicyError("give --certificate-identity or --certificate-identity-regexp, not both")
    if not (identity or identity_regexp) or not issuer:
        raise PolicyError(
            "a keyless signer is named by both --certificate-identity (or "
            "--certificate-identity-regexp) and --certificate-oidc-issuer: give both"
        )
    _regexp(identity_regexp, "--certificate-identity-regexp")
    if root is None:
        raise PolicyError(
            "keyless signatures are checked against sigstore's trusted root: give "
            "--trusted-root FILE (its trusted_root.json; nothing is fetched)"
        )
    return KeylessAuthority((Identity(identity, identity_regexp, issuer),), root)


def _policy_file(path: str, root: TrustedRoot | None) -> list[Rule]:
    where = f"--policy {path}"
    try:
        text = Path(path).read_text()
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except OSError as exc:
        raise PolicyError(f"{where}: cannot be read ({exc.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{where}: not YAML ({str(exc).splitlines()[0]})") from None
    specs = [s for d in documents for s in (d if isinstance(d, list) else [d])]
    if not specs:
        raise PolicyError(f"{where}: holds no policy; see README, Signed kits")
    folder = os.path.dirname(os.path.abspath(path))
    return [_rule(spec, f"{where}, policy {n}", folder, root) for n, spec in enumerate(specs, 1)]


def _rule(document: Any, where: str, folder: str, root: TrustedRoot | None) -> Rule:
    spec = document.get("spec", document) if isinstance(document, dict) else None
    if not isinstance(spec, dict):
        raise PolicyError(f"{where}: not a mapping with 'images' and 'authorities'")
    _known(spec, SPEC_FIELDS, where)
    images = spec.get("images")
    listed = [i.get("glob") for i in images or [] if isinstance(i, dict)]
    if not isinstance(images, list) or not listed or not all(isinstance(g, str) for g in listed):
        raise PolicyError(f"{where}: give 'images' as a list of {{glob: registry/repository}}")
    globs = [str(g) for g in listed]
    for glob in globs:
        _check_glob(glob, where)
    mode = spec.get("mode", "enforce")
    if mode not in MODES:
        raise PolicyError(f"{where}: mode {mode!r}: use enforce or warn")
    given = spec.get("authorities")
    if not isinstance(given, list) or not given:
        raise PolicyError(f"{where}: give 'authorities', a list of key or keyless signers")
    authorities = tuple(
        _authority(a, f"{where}, authority {n}", folder, root) for n, a in enumerate(given, 1)
    )
    return Rule(tuple(globs), authorities, mode, where)


def _check_glob(glob: str, where: str) -> None:
    _, _, path = glob.partition("/")
    if ":" in path or "@" in path:
        raise PolicyError(
            f"{where}: glob {glob!r} must name repositories, registry/repository with * and ** "
            "(a tag or digest is never trusted: the signature binds the digest)"
        )


def _authority(entry: Any, where: str, folder: str, root: TrustedRoot | None) -> AuthorityType:
    if isinstance(entry, dict):
        _known(entry, AUTHORITY_FIELDS, where)
    kinds = [k for k in ("key", "keyless") if isinstance(entry, dict) and k in entry]
    if len(kinds) != 1 or not isinstance(entry[kinds[0]], dict):
        raise PolicyError(f"{where}: give exactly one of 'key' or 'keyless', as a mapping")
    body: dict[str, Any] = entry[kinds[0]]
    _known(body, KEY_FIELDS if kinds[0] == "key" else KEYLESS_FIELDS, where)
    if "trustedRoot" in body:
        root = _trusted_root(os.path.join(folder, str(body["trustedRoot"])), where)
    if kinds[0] == "key":
        if "data" in body:
            return KeyAuthority(_key(str(body["data"]), where, inline=True), where, root)
        if "path" in body:
            path = os.path.join(folder, str(body["path"]))
            return KeyAuthority(_key(path, f"{where}: {path}"), path, root)
        raise PolicyError(f"{where}: give the key's 'data' (PEM) or 'path'")
    identities = body.get("identities")
    if not isinstance(identities, list) or not identities:
        raise PolicyError(f"{where}: give 'identities', a list of subject and issuer")
    named = tuple(_identity(i, where) for i in identities)
    if root is None:
        raise PolicyError(
            f"{where}: a keyless signer is checked against sigstore's trusted root: give its "
            "'trustedRoot' or --trusted-root FILE"
        )
    return KeylessAuthority(named, root)


def _identity(entry: Any, where: str) -> Identity:
    if not isinstance(entry, dict):
        raise PolicyError(f"{where}: an identity is a mapping of subject and issuer")
    _known(entry, IDENTITY_FIELDS, where)
    found = Identity(
        entry.get("subject"),
        _regexp(entry.get("subjectRegExp"), f"{where}: subjectRegExp"),
        entry.get("issuer"),
        _regexp(entry.get("issuerRegExp"), f"{where}: issuerRegExp"),
    )
    if not (found.subject or found.subject_regexp) or not (found.issuer or found.issuer_regexp):
        raise PolicyError(
            f"{where}: an identity needs a subject (or subjectRegExp) and an issuer (or "
            "issuerRegExp)"
        )
    return found


def _known(body: dict[str, Any], known: set[str], where: str) -> None:
    if unknown := sorted(set(body) - known):
        raise PolicyError(f"{where}: unknown field(s) {', '.join(unknown)}: use {sorted(known)}")


def _regexp(pattern: Any, where: str) -> str | None:
    if pattern is None:
        return None
    try:
        re.compile(str(pattern))
    except re.error as exc:
        raise PolicyError(f"{where}: {pattern!r} is not a regular expression ({exc})") from None
    return str(pattern)


def _key(value: str, where: str, *, inline: bool = False) -> PublicKey:
    """A key from a file, or from the PEM itself ($COSIGN_KEY, a policy's ``data``)."""
    try:
        inline = inline or value.lstrip().startswith("-----BEGIN")
        return load_public_key(value.encode() if inline else Path(value).read_bytes())
    except OSError as exc:
        raise PolicyError(f"{where}: cannot be read ({exc.strerror})") from None
    except BadKey as exc:
        raise PolicyError(
            f"{where}: {exc}: give the PEM public key cosign wrote (cosign.pub)"
        ) from None


def _trusted_root(path: str, where: str) -> TrustedRoot:
    try:
        return parse_trusted_root(Path(path).read_bytes())
    except OSError as exc:
        raise PolicyError(f"{where} {path}: cannot be read ({exc.strerror})") from None
    except BadTrustedRoot as exc:
        raise PolicyError(f"{where} {path}: {exc}: give sigstore's trusted_root.json") from None


def _describe(rule: Rule) -> dict[str, Any]:
    """What ``rule`` trusts, for the policy's digest."""
    return {
        "globs": rule.globs,
        "mode": rule.mode,
        "authorities": [_trusts(a) for a in rule.authorities],
    }


def _trusts(authority: AuthorityType) -> dict[str, Any]:
    root = authority.trusted_root
    roots = None
    if root is not None:
        roots = {
            "logs": [(log.key_id, str(log.window)) for log in root.logs],
            "cas": [
                ([c.fingerprint(hashes.SHA256()).hex() for c in a.chain], str(a.window))
                for a in root.authorities
            ],
        }
    if isinstance(authority, KeyAuthority):
        return {"key": key_id(authority.key), "root": roots}
    return {"identities": [str(i) + repr(i) for i in authority.identities], "root": roots}
