"""ModelKits already on the machine: kit's local storage, and OCI image layout folders.

kit keeps every repository in one OCI layout, ``<kit home>/storage``: blobs shared under
``blobs/sha256/<hex>``, and per repository ``<base64url(registry/repo)>-index.json`` (its
manifests) and ``-tags.json`` (tag -> manifest descriptor). A plain OCI image layout names its
manifests in ``index.json``, tagged by ``org.opencontainers.image.ref.name``.

:class:`LayoutSource` is a :class:`~modelkitfs.registry.source.BlobSource` like
:class:`~modelkitfs.registry.RegistryClient` but never touches the network, and its blobs are
read where they lie (``in_place``): they are complete and were verified when kit stored them, so
the cache copies none of them.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import trio

from modelkitfs.errors import NotFound, RegistryError
from modelkitfs.primitives.digests import verify
from modelkitfs.registry.credentials import kit_home
from modelkitfs.registry.source import BlobSource, Deliver, FetchStats, ForwardingSource, Manifest

log = logging.getLogger(__name__)

REF_NAME = "org.opencontainers.image.ref.name"


def kit_storage() -> Path:
    return kit_home() / "storage"


def _repository_file(storage: Path, registry: str, repository: str, suffix: str) -> Path:
    encoded = base64.urlsafe_b64encode(f"{registry}/{repository}".encode()).decode()
    return storage / f"{encoded}-{suffix}.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read {path}: {exc}") from None


class LayoutSource:
    """Manifests and blobs of one OCI layout folder; ``tags`` maps tags to descriptors and
    ``manifests`` lists the digests this source may serve. Errors name the source by
    ``label``."""

    in_place = True  # complete and verified blobs: read where they lie, never cached
    ignores_range: frozenset[str] = frozenset()  # a file: every range is cheap

    def __init__(
        self, root: Path, label: str, tags: dict[str, dict[str, Any]], manifests: set[str]
    ) -> None:
        self.root = root
        self.label = label  # what the user named, for messages
        self.tags = tags
        self.manifests = manifests
        self.stats = FetchStats()

    @property
    def registry(self) -> str:
        return self.label

    def resolve(self, identifier: str) -> str | None:
        """The manifest digest a tag or digest names here, or None."""
        if identifier.startswith("sha256:"):
            return identifier if identifier in self.manifests or self._has(identifier) else None
        descriptor = self.tags.get(identifier)
        digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
        return digest if isinstance(digest, str) else None

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        if not hexpart.isalnum() or not algorithm.isalnum():
            raise RegistryError(f"malformed digest {digest!r}")
        return self.root / "blobs" / algorithm / hexpart

    def _has(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    async def aclose(self) -> None:
        pass

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        digest = self.resolve(identifier)
        if digest is None:
            raise NotFound(
                f"{self.label}: no manifest {identifier!r} in {self.root}: "
                "check the tag with 'kit list'"
            )
        raw = await self._read_whole(digest)
        verify(raw, digest, f"manifest {digest} in {self.root}")
        media_type = ""
        with_type = json.loads(raw) if raw.startswith(b"{") else {}
        if isinstance(with_type, dict):
            media_type = str(with_type.get("mediaType") or "")
        return Manifest(digest=digest, media_type=media_type, raw=raw)

    async def get_blob(self, repository: str, digest: str, size: int | None = None) -> bytes:
        data = await self._read_whole(digest)
        if size is not None and len(data) != size:
            raise RegistryError(f"blob {digest} in {self.root} has {len(data)} bytes, not {size}")
        verify(data, digest, f"blob {digest} in {self.root}")
        return data

    async def deliver_range(
        self, repository: str, digest: str, start: int, end: int, piece: int, deliver: Deliver
    ) -> None:
        """As a registry's: the range read at once, handed over a piece at a time (the store
        reads blobs in place with :meth:`get_range`; this serves the protocol's other users)."""
        data = memoryview(await self.get_range(repository, digest, start, end))
        for offset in range(0, len(data), piece):
            deliver(data[offset : offset + piece])

    async def get_range(self, repository: str, digest: str, start: int, end: int) -> bytes:
        path = self.blob_path(digest)

        def pread() -> bytes:
            fd = os.open(path, os.O_RDONLY)
            try:
                return os.pread(fd, end - start, start)
            finally:
                os.close(fd)

        try:
            data = await trio.to_thread.run_sync(pread)
        except OSError as exc:
            raise RegistryError(f"cannot read blob {digest} in {self.root}: {exc}") from None
        if len(data) != end - start:
            raise RegistryError(
                f"blob {digest} in {self.root} is shorter than its descriptor says: the local "
                "copy is damaged; pull it again with kit"
            )
        self.stats.ranges += 1
        return data

    async def _read_whole(self, digest: str) -> bytes:
        try:
            return await trio.to_thread.run_sync(self.blob_path(digest).read_bytes)
        except FileNotFoundError:
            raise NotFound(
                f"blob {digest} is missing from {self.root}: the local copy is incomplete; pull "
                "it again with kit"
            ) from None
        except OSError as exc:
            raise RegistryError(f"cannot read blob {digest} in {self.root}: {exc}") from None


def from_kit_storage(registry: str, repository: str, identifier: str) -> LayoutSource | None:
    """kit's local copy of ``registry/repository``, if it holds ``identifier``."""
    storage = kit_storage()
    tags = _read_json(_repository_file(storage, registry, repository, "tags")) or {}
    index = _read_json(_repository_file(storage, registry, repository, "index")) or {}
    manifests = {
        m["digest"]
        for m in index.get("manifests") or []
        if isinstance(m, dict) and isinstance(m.get("digest"), str)
    }
    source = LayoutSource(
        storage, f"{registry}/{repository}", tags if isinstance(tags, dict) else {}, manifests
    )
    if not manifests or source.resolve(identifier) is None:
        return None
    log.info("%s/%s:%s is in kit's local storage %s", registry, repository, identifier, storage)
    return source


class LoginChecked(ForwardingSource):
    """kit's local copy of a registry's kit, for a session that serves others (the node
    service, the CSI plugin): a manifest is served from the copy only once the registry has
    served it to this session's login, so the copy saves the download, never grants access.
    What a tag names is the registry's answer, not the copy's."""

    def __init__(self, copy: LayoutSource, registry: BlobSource) -> None:
        super().__init__(copy)
        self.copy, self.origin = copy, registry

    async def get_manifest(self, repository: str, identifier: str) -> Manifest:
        answer = await self.origin.get_manifest(repository, identifier)
        if self.copy.resolve(answer.digest) is None:
            raise NotFound(
                f"{self.copy.label}: the registry names {answer.digest}, which kit's local "
                f"storage {self.copy.root} does not hold: pull it with kit, or serve it without "
                "--allow-local for the storage"
            )
        return await self.copy.get_manifest(repository, answer.digest)

    async def aclose(self) -> None:
        pass  # the registry's client belongs to the session, the copy holds nothing open


def from_layout_folder(path: str) -> LayoutSource:
    """A plain OCI image layout (``oci-layout`` and ``index.json`` in ``path``)."""
    root = Path(path)
    if not (root / "oci-layout").is_file():
        raise NotFound(
            f"{path} is not an OCI image layout (no oci-layout file): give the folder that "
            "holds oci-layout, index.json and blobs/"
        )
    index = _read_json(root / "index.json") or {}
    tags: dict[str, dict[str, Any]] = {}
    manifests: set[str] = set()
    for descriptor in index.get("manifests") or []:
        if isinstance(descriptor, dict) and isinstance(descriptor.get("digest"), str):
            manifests.add(descriptor["digest"])
            name = (descriptor.get("annotations") or {}).get(REF_NAME)
            if name:
                tags[str(name)] = descriptor
    if len(manifests) == 1 and "latest" not in tags:
        tags["latest"] = {"digest": next(iter(manifests))}  # the only one needs no tag
    return LayoutSource(root, f"oci-layout:{path}", tags, manifests)
