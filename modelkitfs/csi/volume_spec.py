"""What a publish request asks for, checked: the kit, its options and its credentials.

A pod's inline volume names the kit in ``volumeAttributes`` (``reference``, and optionally
``filter``, ``label``, ``plainHTTP``, ``timeout``, and signers the kit must be signed by besides
those the node's policy requires: ``verifyKey``, ``certificateIdentity`` with
``certificateOidcIssuer``), which kubelet passes as the request's
``volume_context`` beside the pod's own keys (``csi.storage.k8s.io/...``); its
``nodePublishSecretRef`` arrives as ``secrets``: ``username``/``password`` (for the kit's
registry), or a ``.dockerconfigjson`` as in an image pull secret, kept whole as a :class:`Login`
whose entries each go to their own host only (a ``model.path`` on another registry gets that
registry's entry, or none). Anything malformed is an :class:`InvalidVolume` whose message says
which attribute and what to write instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from modelkitfs.errors import ModelKitFSError
from modelkitfs.kit import parse_filters, parse_labels
from modelkitfs.reference import DEFAULT_REGISTRY, is_registry, parse_reference
from modelkitfs.registry.credentials import AUTH_CONFIG, Credential, from_auths
from modelkitfs.signing.keys import BadKey, load_public_key

POD_PREFIX = "csi.storage.k8s.io/"
SIGNERS = ("verifyKey", "certificateIdentity", "certificateOidcIssuer")
ATTRIBUTES = ("reference", "filter", "label", "plainHTTP", "timeout", *SIGNERS)
FILTER_SEPARATOR = ";"  # kit's filter syntax has commas of its own: filters are split on this
DOCKER_CONFIG_KEY = ".dockerconfigjson"
SECRET = "the volume's nodePublishSecretRef"


class InvalidVolume(ModelKitFSError):
    """The request's attributes or secrets are malformed (INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class VolumeSpec:
    """The kit a volume shows and how: what a repeated publish must ask for again."""

    reference: str
    filters: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    plain_http: bool | None = None  # None: as the plugin was told
    timeout: float | None = None
    credentials: bool = False  # whether the secrets carried credentials (never which)
    # Signers required besides the node's (README, Signed kits): a PEM public key, a keyless
    # identity and its issuer.
    verify_key: str | None = None
    certificate_identity: str | None = None
    certificate_oidc_issuer: str | None = None

    @property
    def signers(self) -> dict[str, Any]:
        """The signers the volume asks for, as MountOptions fields (none: empty)."""
        found = {
            "verify_keys": [self.verify_key] if self.verify_key else [],
            "certificate_identity": self.certificate_identity,
            "certificate_oidc_issuer": self.certificate_oidc_issuer,
        }
        return {name: value for name, value in found.items() if value}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, repr=False)
class Login:
    """A volume's credentials: Docker config ``auths``, each entry for its own host."""

    auths: dict[str, Any]

    def credential(self, host: str) -> Credential | None:
        """The entry for ``host`` (``host[:port]``), if any: never another host's."""
        return from_auths({"auths": self.auths}, host, SECRET)

    def environment(self) -> dict[str, str]:
        """For a daemon's environment (never its command line): these and no other."""
        return {AUTH_CONFIG: json.dumps({"auths": self.auths})}

    def __repr__(self) -> str:
        return f"Login({sorted(self.auths)})"


def parse_volume(
    context: dict[str, str], secrets: dict[str, str]
) -> tuple[VolumeSpec, Login | None, dict[str, str]]:
    """The spec, the secrets' credentials, and the pod's keys of ``context``."""
    pod = {k.removeprefix(POD_PREFIX): v for k, v in context.items() if k.startswith(POD_PREFIX)}
    unknown = sorted(k for k in context if not k.startswith(POD_PREFIX) and k not in ATTRIBUTES)
    if unknown:
        raise InvalidVolume(
            f"unknown volume attribute(s) {', '.join(unknown)}: use {', '.join(ATTRIBUTES)}"
        )
    text = context.get("reference", "").strip()
    if not text:
        raise InvalidVolume(
            "the volume has no 'reference' attribute: set volumeAttributes.reference to the kit, "
            "e.g. registry.example/team/llm:v1"
        )
    try:
        reference = parse_reference(text)
    except ModelKitFSError as exc:
        raise InvalidVolume(f"volume attribute 'reference': {exc}") from None
    if reference.is_layout:
        raise InvalidVolume(
            f"volume attribute 'reference' {text!r} names a folder of the node: a volume takes "
            "a registry reference (registry.example/team/llm:v1)"
        )
    if reference.registry != DEFAULT_REGISTRY and not is_registry(reference.registry):
        raise InvalidVolume(
            f"volume attribute 'reference' {text!r}: {reference.registry!r} is no registry "
            "host: write registry.example[:port]/repository:tag"
        )
    filters = [f.strip() for f in context.get("filter", "").split(FILTER_SEPARATOR) if f.strip()]
    labels = [x.strip() for x in context.get("label", "").split(",") if x.strip()]
    try:
        parse_filters(filters)
        parse_labels(labels)
    except ModelKitFSError as exc:
        raise InvalidVolume(f"volume attribute 'filter' or 'label': {exc}") from None
    login = _login(secrets, reference.registry)
    spec = VolumeSpec(
        reference=text,
        filters=filters,
        labels=labels,
        plain_http=_boolean(context, "plainHTTP"),
        timeout=_seconds(context, "timeout"),
        credentials=login is not None,
        **_signers(context),
    )
    return spec, login, pod


def service_path(reference: str) -> str:
    """Where ``modelkitfs serve`` shows the kit: ``registry/repository:tag`` (the tag spelled
    out, ``latest`` when none is given), or without the registry for kit's local storage."""
    parsed = parse_reference(reference)
    text = str(parsed)
    return (
        text.removeprefix(f"{DEFAULT_REGISTRY}/") if parsed.registry == DEFAULT_REGISTRY else text
    )


def _signers(context: dict[str, str]) -> dict[str, str | None]:
    """The signers a volume requires: a PEM public key, or an identity with its issuer."""
    key = context.get("verifyKey", "").strip() or None
    if key is not None:
        try:
            load_public_key(key.encode())
        except BadKey as exc:
            raise InvalidVolume(
                f"volume attribute 'verifyKey': {exc}: give the PEM public key itself "
                "(-----BEGIN PUBLIC KEY-----...)"
            ) from None
    identity = context.get("certificateIdentity", "").strip() or None
    issuer = context.get("certificateOidcIssuer", "").strip() or None
    if (identity is None) != (issuer is None):
        raise InvalidVolume(
            "volume attributes 'certificateIdentity' and 'certificateOidcIssuer' go together: "
            "give both"
        )
    return {"verify_key": key, "certificate_identity": identity, "certificate_oidc_issuer": issuer}


def _boolean(context: dict[str, str], key: str) -> bool | None:
    if key not in context:
        return None
    value = context[key].strip().lower()
    if value not in ("true", "false"):
        raise InvalidVolume(f"volume attribute {key!r} is {context[key]!r}: write true or false")
    return value == "true"


def _seconds(context: dict[str, str], key: str) -> float | None:
    if key not in context:
        return None
    try:
        value = float(context[key])
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InvalidVolume(
            f"volume attribute {key!r} is {context[key]!r}: write a positive number of seconds"
        )
    return value


def _login(secrets: dict[str, str], registry: str) -> Login | None:
    """The credentials the secrets hold (none when they hold no entry); their values are never
    in a message. ``username``/``password`` are for the kit's ``registry``."""
    if not secrets:
        return None
    if DOCKER_CONFIG_KEY in secrets:
        try:
            document = json.loads(secrets[DOCKER_CONFIG_KEY])
        except ValueError:
            document = None
        auths = document.get("auths") if isinstance(document, dict) else None
        if not isinstance(auths, dict):
            raise InvalidVolume(
                f"{SECRET}: {DOCKER_CONFIG_KEY} is not a JSON object with 'auths': use a secret "
                "of type kubernetes.io/dockerconfigjson"
            )
        login = Login(auths)
        found = login.credential(registry)
        if found is not None and found.identity_token:
            raise InvalidVolume(
                f"{SECRET}: the entry for {registry} holds an identity token: give a username "
                "and password (or a token as the password) instead"
            )
        return login if auths else None
    if "username" in secrets or "password" in secrets:
        if not secrets.get("username") or "password" not in secrets:
            raise InvalidVolume(f"{SECRET}: give both 'username' and 'password'")
        return Login({registry: {"username": secrets["username"], "password": secrets["password"]}})
    raise InvalidVolume(
        f"{SECRET} holds neither 'username'/'password' nor {DOCKER_CONFIG_KEY}: "
        "put the registry's credentials under those keys"
    )
