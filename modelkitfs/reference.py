"""Parse ModelKit references the way ``kit`` does.

``registry/repository[:tag][@sha256:hex]``. The first path component names a registry only when
it contains a ``.`` or a ``:`` or is ``localhost``; otherwise the registry is ``localhost``,
which kit keeps in local storage only. No tag and no digest means ``latest``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from modelkitfs.errors import InvalidReference
from modelkitfs.primitives.digests import is_digest

DEFAULT_REGISTRY = "localhost"
DEFAULT_TAG = "latest"
LAYOUT_PREFIX = "oci-layout:"

_REPO_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_HOST = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*(?::[0-9]{1,5})?")


def is_repository_component(name: str) -> bool:
    """Whether ``name`` may be one ``/``-separated part of a repository (``team``, ``llm``)."""
    return _REPO_COMPONENT.fullmatch(name) is not None


def is_registry(name: str) -> bool:
    """Whether a reference's first part ``name`` names a registry: a host, with a port or a
    dot (``registry.example``, ``127.0.0.1:5000``), as kit tells them from repositories."""
    return ("." in name or ":" in name) and _HOST.fullmatch(name) is not None


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def is_layout(self) -> bool:
        """An OCI image layout folder on this machine (``oci-layout:PATH[:tag][@digest]``)."""
        return self.registry == LAYOUT_PREFIX

    @property
    def identifier(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = (
            f"{self.registry}{self.repository}"
            if self.is_layout
            else f"{self.registry}/{self.repository}"
        )
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse ``text`` or raise :class:`InvalidReference` saying what is wrong with it."""
    original = text
    hint = (
        "expected REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST], "
        "e.g. registry.example:5000/team/model:v1"
    )
    if not text or text != text.strip():
        raise InvalidReference(f"invalid reference {original!r}: {hint}")
    if text.startswith(LAYOUT_PREFIX):
        return _parse_layout(text[len(LAYOUT_PREFIX) :], original)
    scheme, separator, rest = text.partition("://")
    if separator:
        plain = " and --plain-http" if scheme.lower() == "http" else ""
        raise InvalidReference(
            f"{original!r} is a URL, not a reference: give {rest}{plain} (a reference names "
            "no scheme)"
        )
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not is_digest(digest):
            raise InvalidReference(f"invalid digest {digest!r} in reference {original!r}: {hint}")
    tag = None
    last_slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > last_slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r} in reference {original!r}: {hint}")
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == DEFAULT_REGISTRY):
        registry, repository = first, rest
    else:
        registry, repository = DEFAULT_REGISTRY, text
    if not repository or not all(_REPO_COMPONENT.fullmatch(p) for p in repository.split("/")):
        raise InvalidReference(
            f"invalid repository {repository!r} in reference {original!r}: use lowercase letters, "
            f"digits and . _ - separated by /; {hint}"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def _parse_layout(text: str, original: str) -> Reference:
    path, _, digest = text.partition("@")
    tag = None
    if ":" in path.rpartition("/")[2]:
        path, _, tag = path.rpartition(":")
    if not path or (digest and not is_digest(digest)) or (tag and not _TAG.fullmatch(tag)):
        raise InvalidReference(
            f"invalid reference {original!r}: expected oci-layout:PATH[:TAG][@sha256:DIGEST]"
        )
    return Reference(
        LAYOUT_PREFIX, os.path.abspath(path), tag or (None if digest else "latest"), digest or None
    )
