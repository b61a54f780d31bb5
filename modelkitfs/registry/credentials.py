"""Registry credentials, found where kit finds them, each for its own host only.

``$MODELKITFS_AUTH_CONFIG``, when set, is a Docker config document (JSON, as a Kubernetes pull
secret's ``.dockerconfigjson``): its ``auths`` are then the only credentials, looked up by host
(the CSI plugin gives a volume's secret to its daemon so). Otherwise, in order:
``$MODELKITFS_USERNAME``/``$MODELKITFS_PASSWORD`` (for CI), for the one registry
``$MODELKITFS_REGISTRY`` names (the command line sets it from the kit's reference) and no other
host, not a kit's ``model.path`` elsewhere nor a mirror; kit's own
``<kit home>/credentials.json`` (what ``kit login`` writes), then Docker's config
(``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``). Both files use Docker's format:
``auths.<host>.auth`` (base64 ``user:password``) or ``identitytoken``, ``credHelpers.<host>`` and
``credsStore`` naming a ``docker-credential-<name>`` program that is asked with ``get``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelkitfs.errors import InvalidReference
from modelkitfs.reference import parse_reference

log = logging.getLogger(__name__)

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = {"docker.io", "index.docker.io", "registry-1.docker.io"}
HELPER_TIMEOUT = 30.0
USERNAME, PASSWORD = "MODELKITFS_USERNAME", "MODELKITFS_PASSWORD"
REGISTRY = "MODELKITFS_REGISTRY"  # the one host the pair above is for
AUTH_CONFIG = "MODELKITFS_AUTH_CONFIG"


@dataclass(frozen=True)
class Credential:
    username: str
    secret: str
    source: str  # where it came from, for error messages
    identity_token: bool = False  # an OAuth2 refresh token rather than a password

    def __repr__(self) -> str:
        return f"Credential({self.username!r}, source={self.source!r})"


def kit_home() -> Path:
    """``$KITOPS_HOME``, else ``$XDG_DATA_HOME/kitops``, else ``~/.local/share/kitops``."""
    if explicit := os.environ.get("KITOPS_HOME"):
        return Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "kitops"


def config_files() -> list[Path]:
    docker = os.environ.get("DOCKER_CONFIG")
    docker_dir = Path(docker) if docker else Path.home() / ".docker"
    return [kit_home() / "credentials.json", docker_dir / "config.json"]


def find_credential(registry: str) -> Credential | None:
    """Credentials for ``registry`` (``host[:port]``), or None to go anonymous."""
    given = os.environ.get(AUTH_CONFIG)
    if given is not None:  # the only credentials there are
        return from_auths(_document(given), registry, f"${AUTH_CONFIG}")
    username, password = os.environ.get(USERNAME), os.environ.get(PASSWORD)
    if username and password is not None and _is_pair_registry(registry):
        return Credential(username, password, f"${USERNAME}/${PASSWORD}")
    for path in config_files():
        config = _load(path)
        if config is not None and (found := _from_config(config, registry, path)) is not None:
            return found
    return None


def _is_pair_registry(registry: str) -> bool:
    return _normalize(os.environ.get(REGISTRY, "")) in _keys(registry)


def _document(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        log.warning("ignoring $%s: it is not a JSON object", AUTH_CONFIG)
        return {}
    return document


def pair_registry(reference: str) -> dict[str, str]:
    """``{"MODELKITFS_REGISTRY": the registry of reference}`` when the credential pair is set
    without it, for the environment of a command or daemon given ``reference``; else none."""
    if not os.environ.get(USERNAME) or REGISTRY in os.environ:
        return {}
    try:
        return {REGISTRY: parse_reference(reference).registry}
    except InvalidReference:
        return {}  # refused with its reason where the reference is used


def from_auths(document: dict[str, Any], registry: str, source: str) -> Credential | None:
    """Credentials for ``registry`` from the ``auths`` of a Docker config document given
    rather than read (a Kubernetes pull secret's ``.dockerconfigjson``); runs no helper."""
    return _from_config({"auths": document.get("auths")}, registry, Path(source))


def _load(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable credentials file %s: %s", path, exc)
        return None
    return document if isinstance(document, dict) else None


def _keys(registry: str) -> set[str]:
    host = registry.lower()
    return {DOCKER_HUB_KEY, *_DOCKER_HUB_HOSTS} if host in _DOCKER_HUB_HOSTS else {host}


def _normalize(key: str) -> str:
    """``https://host:port/v2/`` -> ``host:port``, as Docker matches ``auths`` keys."""
    if key == DOCKER_HUB_KEY:
        return key
    bare = key.split("://", 1)[-1]
    return bare.split("/", 1)[0].lower()


def _from_config(config: dict[str, Any], registry: str, path: Path) -> Credential | None:
    keys = _keys(registry)
    helpers = config.get("credHelpers") or {}
    for key, helper in helpers.items() if isinstance(helpers, dict) else ():
        if _normalize(key) in keys and isinstance(helper, str):
            return _from_helper(helper, key)
    auths = config.get("auths") or {}
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if _normalize(key) in keys and isinstance(entry, dict):
            if (found := _from_entry(entry, f"{path} ({key})")) is not None:
                return found
            break
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        key = DOCKER_HUB_KEY if DOCKER_HUB_KEY in keys else registry
        return _from_helper(store, key)
    return None


def _from_entry(entry: dict[str, Any], source: str) -> Credential | None:
    if token := entry.get("identitytoken"):
        return Credential("<token>", str(token), source, identity_token=True)
    if encoded := entry.get("auth"):
        try:
            username, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            log.warning("ignoring malformed auth entry in %s", source)
            return None
        return Credential(username, password, source)
    if entry.get("username") and entry.get("password") is not None:
        return Credential(str(entry["username"]), str(entry["password"]), source)
    return None


def _from_helper(name: str, server: str) -> Credential | None:
    program = f"docker-credential-{name}"
    try:
        result = subprocess.run(
            [program, "get"],
            input=server,
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("credential helper %s failed: %s", program, exc)
        return None
    if result.returncode != 0:
        log.debug("%s has no credentials for %s: %s", program, server, result.stdout.strip())
        return None
    try:
        answer = json.loads(result.stdout)
        username, secret = str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError):
        log.warning("credential helper %s answered something unreadable", program)
        return None
    return Credential(username, secret, program, identity_token=username == "<token>")
