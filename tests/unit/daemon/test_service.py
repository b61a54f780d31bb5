"""The node service's statistics: totals in the root's attribute, whatever the number of kits
(an extended attribute holds 64 KiB at most: about 2,000 kits' names), and the kits' names in
a file of their own that ``modelkitfs mounts`` reads."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from modelkitfs.daemon.service import service_stats, with_kits
from modelkitfs.fuse.namespace import ROOT
from modelkitfs.fuse.operations import STATS_XATTR
from modelkitfs.fuse.service import ServiceOperations
from modelkitfs.session.options import MountOptions
from modelkitfs.session.sources import Sources
from tests.unit.fuse.test_service import Loader, path

KITS = 3000


def test_the_stats_attribute_stays_small_with_thousands_of_kits(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    kits_file = logs / "serve-1-kits.json"

    async def main() -> tuple[bytes, list[str]]:
        operations = ServiceOperations(Loader(), timeout=5)
        sources = Sources(MountOptions(cache_dir=str(tmp_path / "cache")))
        operations.stats = service_stats(operations, sources, str(logs / "x.log"), kits_file)
        names = []
        for n in range(KITS):
            name = f"llm@sha256:{n:064x}"
            await path(operations, "registry.example", "team", name)
            names.append(f"registry.example/team/{name}")
        try:
            return await operations.getxattr(ROOT, STATS_XATTR, None), sorted(names)
        finally:
            sources.cache.process.release()

    value, names = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(value) < 2048
    stats = json.loads(value)
    assert stats["kit_count"] == stats["kits_loaded"] == KITS
    assert stats["kits_file"] == str(kits_file)
    assert with_kits(stats, os.getuid())["kits"] == names  # as `mounts --json` lists them
    assert stat.S_IMODE(kits_file.stat().st_mode) == 0o600
    os.chown(kits_file, 65534, 65534)  # a file another user's daemon could name
    assert "kits" not in with_kits(stats, os.getuid())
    assert "kits" not in with_kits({**stats, "kits_file": "/etc/passwd"}, os.getuid())


def test_a_tag_resolves_only_to_a_digest_the_signature_policy_trusts(tmp_path: Path) -> None:
    """The service's tag symlinks move only to digests that pass (README, Signed kits)."""
    from modelkitfs.daemon.service import SourcesLoader
    from modelkitfs.reference import parse_reference
    from modelkitfs.registry.testing import MemoryRegistry
    from modelkitfs.signing import SignatureRefused
    from tests.support import cosign

    key = cosign.new_key()
    registry = MemoryRegistry()
    signed = registry.push("team/kit", "v1", b'{"schemaVersion":2,"layers":[]}', "", {})
    signatures = cosign.signature_manifest([cosign.classic(signed, key)])
    tag = cosign.signature_tag(signed)
    registry.push("team/kit", tag, signatures.manifest, "", signatures.blobs)
    options = MountOptions(
        cache_dir=str(tmp_path),
        verify_keys=[str(cosign.write_public(key, tmp_path / "cosign.pub"))],
        insecure_ignore_tlog=True,
    )

    async def main() -> None:
        async with Sources(options) as sources:
            sources.clients["reg.test"] = registry.client()
            loader = SourcesLoader(sources)
            assert await loader.resolve(parse_reference("reg.test/team/kit:v1")) == signed
            registry.push("team/kit", "v1", b'{"schemaVersion":2,"layers":[{}]}', "", {})
            with pytest.raises(SignatureRefused, match="carries no signature"):
                await loader.resolve(parse_reference("reg.test/team/kit:v1"))

    trio.run(main)
