"""A repository in memory holding a manifest and what cosign pushes beside it, and the policies
the tests check it by."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from modelkitfs.registry.source import Manifest
from modelkitfs.registry.testing import MemorySource
from modelkitfs.signing import Policy, Verdict, load_policy, verify_digest
from modelkitfs.signing.candidates import WithoutReferrers
from tests.support import cosign
from tests.support.kitbuilder import Artifact

NAME = "memory.registry/team/kit"
REPOSITORY = "team/kit"
KIT = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}


@dataclass
class Signed:
    """A kit manifest (``digest``) and its signatures, in memory."""

    source: MemorySource = field(default_factory=MemorySource)
    referrers_api: Manifest | None = None  # what the referrers API answers (None: 404)

    def __post_init__(self) -> None:
        self.kit = self.source.add_manifest(KIT, "v1")
        self.digest = self.kit.digest
        self.artifact = Artifact(self.kit.raw, b"")

    def put(self, artifact: Artifact, tag: str) -> None:
        self.source.add_manifest(json.loads(artifact.manifest), tag)
        for data in artifact.blobs.values():
            self.source.add(data)

    def classic(self, *layers: cosign.Layer) -> None:
        self.put(cosign.signature_manifest(list(layers)), cosign.signature_tag(self.digest))

    def bundles(self, *bundles: bytes, fallback: bool = True) -> None:
        referrers = [cosign.referrer(self.artifact, b) for b in bundles]
        for referrer in referrers:
            self.put(referrer, referrer.digest)
        index = cosign.referrers_index(referrers)
        if fallback:
            self.put(index, cosign.fallback_tag(self.digest))
        else:
            self.referrers_api = Manifest(index.digest, index.media_type, index.manifest)

    async def referrers(self, repository: str, digest: str) -> Manifest | None:
        return self.referrers_api

    def verify(self, policy: Policy | None, name: str = NAME) -> Verdict:
        assert policy is not None
        store = WithoutReferrers(self.source)
        store.referrers = self.referrers  # type: ignore[method-assign]
        return trio.run(verify_digest, store, name, REPOSITORY, self.digest, policy)


def key_policy(tmp_path: Path, key: Any, **options: Any) -> Policy | None:
    path = cosign.write_public(key, tmp_path / f"key{id(key)}.pub")
    return load_policy([str(path)], **options)
