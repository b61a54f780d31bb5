"""The session: its background work runs in its nursery and its end joins it; it reads the
machine's own files only as its options' trust allows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

from modelkitfs.blobs import BlobStore
from modelkitfs.blobs.verified import VERIFIED_RECORD
from modelkitfs.cache import DiskCache
from modelkitfs.errors import ModelKitFSError, NotAllowed
from modelkitfs.reference import parse_reference
from modelkitfs.registry.testing import MemoryRegistry
from modelkitfs.session.options import MountOptions
from modelkitfs.session.sources import Sources
from modelkitfs.signing import SignatureRefused
from tests.support import cosign
from tests.support.kitbuilder import build_modelkit, store_locally, write_layout
from tests.unit.blobs.stores import BLOCK, OneBlob


def test_leaving_the_session_cancels_its_background_work_and_joins_it(tmp_path: Path) -> None:
    ended: list[str] = []

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            ended.append("cancelled")

    async def main() -> None:
        async with Sources(MountOptions(cache_dir=str(tmp_path))) as sources:
            sources.start_soon(forever)
            await trio.testing.wait_all_tasks_blocked()
            assert not ended
        assert ended == ["cancelled"]

    trio.run(main)


def test_what_ends_the_session_leaves_it_as_it_came(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(ModelKitFSError, match=r"^no such kit$"):  # not an exception group
            async with Sources(MountOptions(cache_dir=str(tmp_path))):
                raise ModelKitFSError("no such kit")

    trio.run(main)


def test_blocks_written_behind_and_their_verification_are_done_when_it_ends(
    tmp_path: Path,
) -> None:
    source = OneBlob(size=12 * BLOCK)

    async def main() -> None:
        async with Sources(MountOptions(cache_dir=str(tmp_path))) as sources:
            store = BlobStore(
                source,
                "repo",
                sources.cache,
                sources.nursery,
                budget=sources.budget,
                block_size=BLOCK,
            )
            sources.stores["memory", "repo"] = store
            assert await store.read(source.digest, source.size, 0, source.size) == source.data

    trio.run(main)
    cache = DiskCache(tmp_path)
    assert cache.cached_blocks(source.digest, BLOCK, 0, 11) == set(range(12))
    assert cache.read_meta(source.digest, VERIFIED_RECORD) is not None


@pytest.mark.parametrize(
    ("reference", "allow", "readable"),
    [
        ("oci-layout:layouts/kit:v1", None, True),  # a user's own command reads any folder
        ("oci-layout:layouts/kit:v1", "layouts", True),
        ("oci-layout:layouts/../elsewhere/kit:v1", "layouts", False),
        ("oci-layout:layouts/link/kit:v1", "layouts", False),  # a symlink out of the folder
        ("oci-layout:elsewhere/kit:v1", "", False),
        ("secret:v1", "kitops/storage", True),  # kit's local storage
        ("secret:v1", "layouts", False),
    ],
)
def test_a_session_reads_local_sources_only_inside_the_folders_it_may(
    reference: str,
    allow: str | None,
    readable: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KITOPS_HOME", str(tmp_path / "kitops"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src/w.bin").write_bytes(b"w")
    kit = build_modelkit(tmp_path / "src", {"manifestVersion": "1.0.0", "model": {"path": "w.bin"}})
    for folder in ("layouts/kit", "elsewhere/kit"):
        write_layout(tmp_path / folder, kit, "v1")
    (tmp_path / "layouts/link").symlink_to(tmp_path / "elsewhere")
    store_locally(tmp_path / "kitops", "localhost", "secret", "v1", kit)
    folders = None if allow is None else tuple(f for f in [allow] if f)
    options = MountOptions(cache_dir=str(tmp_path / "cache"), allow_local=folders)

    async def main() -> None:
        async with Sources(options) as sources:
            if readable:
                opened = await sources.open_kit(parse_reference(reference))
                assert opened.manifest_digest == kit.digest
            else:
                with pytest.raises(NotAllowed, match="--allow-local"):
                    await sources.open_kit(parse_reference(reference))

    trio.run(main)


# --- signatures (README, Signed kits) ---------------------------------------------------------

SIGNED_REPOSITORY = "team/kit"


def registry_kit(directory: Path, registry: MemoryRegistry, tag: str, data: bytes, **kitfile):
    """A one-file kit pushed at ``tag``; its artifact."""
    directory.mkdir()
    (directory / "weights.bin").write_bytes(data)
    kit = build_modelkit(directory, {"manifestVersion": "1.0.0", **kitfile})
    registry.push(SIGNED_REPOSITORY, tag, kit.manifest, kit.media_type, kit.blobs)
    return kit


def sign_in(registry: MemoryRegistry, digest: str, key) -> None:
    signatures = cosign.signature_manifest([cosign.classic(digest, key)])
    registry.push(
        SIGNED_REPOSITORY,
        cosign.signature_tag(digest),
        signatures.manifest,
        signatures.media_type,
        signatures.blobs,
    )


def open_with(registry: MemoryRegistry, options: MountOptions, reference: str):
    async def main():
        async with Sources(options) as sources:
            sources.clients["reg.test"] = registry.client()
            kit = await sources.open_kit(parse_reference(reference))
            await kit.tree.aclose()
            return kit, sources.signature_checks

    return trio.run(main)


def signed_options(tmp_path: Path, key, name: str = "cosign.pub") -> MountOptions:
    path = cosign.write_public(key, tmp_path / name)
    return MountOptions(
        cache_dir=str(tmp_path / "cache"), verify_keys=[str(path)], insecure_ignore_tlog=True
    )


def test_an_unsigned_kit_is_refused_before_its_config_is_read(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    kit = registry_kit(tmp_path / "kit", registry, "v1", b"weights")
    options = signed_options(tmp_path, cosign.new_key())
    with pytest.raises(SignatureRefused, match=f"reg.test/team/kit@{kit.digest} is refused"):
        open_with(registry, options, "reg.test/team/kit:v1")
    config = json.loads(kit.manifest)["config"]["digest"]
    assert not any(config in path for path in registry.documents)


def test_a_signed_kit_opens_and_its_pass_is_remembered_per_policy(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    key = cosign.new_key()
    kit = registry_kit(tmp_path / "kit", registry, "v1", b"weights")
    sign_in(registry, kit.digest, key)
    options = signed_options(tmp_path, key)
    opened, checks = open_with(registry, options, "reg.test/team/kit:v1")
    assert opened.manifest_digest == kit.digest and checks["passed"] == 1
    signature_requests = [p for p in registry.documents if ".sig" in p]
    assert len(signature_requests) == 1

    _, checks = open_with(registry, options, "reg.test/team/kit:v1")  # a new session
    assert checks["passed"] == 0
    assert [p for p in registry.documents if ".sig" in p] == signature_requests

    another = options.replace(verify_keys=[str(cosign.write_public(key, tmp_path / "b.pub"))])
    assert open_with(registry, another, "reg.test/team/kit:v1")[1]["passed"] == 0  # same key
    with_tlog = options.replace(
        insecure_ignore_tlog=False,
        trusted_root=str(cosign.trusted_root(tmp_path / "root.json", rekor=cosign.Rekor())),
    )
    with pytest.raises(SignatureRefused, match="it carries no transparency-log entry"):
        open_with(registry, with_tlog, "reg.test/team/kit:v1")  # another policy: checked again


def test_the_kit_a_model_path_names_is_checked_too(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    key = cosign.new_key()
    base = registry_kit(tmp_path / "base", registry, "base", b"base weights")
    kit = registry_kit(
        tmp_path / "kit", registry, "v1", b"adapter", model={"path": "reg.test/team/kit:base"}
    )
    sign_in(registry, kit.digest, key)
    with pytest.raises(SignatureRefused, match=f"@{base.digest} is refused"):
        open_with(registry, signed_options(tmp_path, key), "reg.test/team/kit:v1")
