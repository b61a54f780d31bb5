"""Signed kits end to end: signatures made as cosign makes them, pushed to the real registry
beside the kit, checked before anything of a kit is served by a mount, ``cat``, ``verify`` and
the node service (README, Signed kits)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from modelkitfs.errors import ModelKitFSError
from tests.conftest import Mounts, one_file_kit
from tests.e2e.test_serve import Service
from tests.support import cosign
from tests.support.clirun import assert_one_line_error, run_cli
from tests.support.kitbuilder import Artifact, build_index, push
from tests.support.registry_proxy import CountingProxy

SIZE = 1024 * 1024 + 7
REPOSITORY = "signing/kit"


class Keys:
    def __init__(self, folder: Path) -> None:
        self.key, self.other = cosign.new_key(), cosign.new_key()
        self.public = cosign.write_public(self.key, folder / "cosign.pub")
        self.other_public = cosign.write_public(self.other, folder / "other.pub")
        self.rekor = cosign.Rekor()
        self.root = cosign.trusted_root(folder / "trusted_root.json", rekor=self.rekor)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


def kit(folder: Path, seed: int) -> tuple[bytes, Artifact]:
    folder.mkdir()
    return one_file_kit(folder, SIZE, seed)


def sign_classic(registry: str, artifact: Artifact, key, rekor: cosign.Rekor | None = None) -> None:
    signatures = cosign.signature_manifest([cosign.classic(artifact.digest, key, rekor=rekor)])
    push(registry, REPOSITORY, cosign.signature_tag(artifact.digest), signatures)


def sign_bundle(registry: str, artifact: Artifact, bundle: bytes) -> None:
    """A bundle as cosign v3 pushes it to a registry without the referrers API: the referrer
    by its digest, and the index of referrers at the fallback tag."""
    referrer = cosign.referrer(artifact, bundle)
    push(registry, REPOSITORY, referrer.digest, referrer)
    push(
        registry,
        REPOSITORY,
        cosign.fallback_tag(artifact.digest),
        cosign.referrers_index([referrer]),
    )


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory, registry: str, keys: Keys) -> dict:
    """``signed`` (a classic signature by the key), ``bundled`` (a logged bundle behind the
    fallback tag) and ``unsigned``: each (tag, bytes, artifact)."""
    folder = tmp_path_factory.mktemp("signing")
    made = {}
    for seed, name in enumerate(("signed", "bundled", "unsigned")):
        data, artifact = kit(folder / name, seed)
        push(registry, REPOSITORY, name, artifact)
        made[name] = (f"{REPOSITORY}:{name}", data, artifact)
    sign_classic(registry, made["signed"][2], keys.key, keys.rekor)
    bundled = made["bundled"][2]
    sign_bundle(registry, bundled, cosign.bundle(bundled.digest, keys.key, rekor=keys.rekor))
    return made


def test_a_mount_serves_a_signed_kit_and_refuses_unsigned_and_other_keys(
    mounts: Mounts, keys: Keys, kits: dict
) -> None:
    tag, data, _ = kits["signed"]
    trusted = {"verify_keys": [str(keys.public)], "insecure_ignore_tlog": True}
    assert (mounts.mount(tag, **trusted) / "weights.bin").read_bytes() == data

    unsigned_tag, _, unsigned = kits["unsigned"]
    with pytest.raises(
        ModelKitFSError, match=f"{unsigned.digest} is refused .*carries no signature"
    ):
        mounts.mount(unsigned_tag, **trusted)
    other = {"verify_keys": [str(keys.other_public)], "insecure_ignore_tlog": True}
    with pytest.raises(ModelKitFSError, match=r"it is not signed by key .*other\.pub"):
        mounts.mount(tag, name="other-key", **other)


def test_a_tag_moved_to_an_unsigned_kit_leaves_a_mount_on_what_it_verified(
    tmp_path: Path, registry: str, mounts: Mounts, keys: Keys
) -> None:
    before, signed = kit(tmp_path / "before", 11)
    after, unsigned = kit(tmp_path / "after", 12)
    push(registry, REPOSITORY, "moving", signed)
    sign_classic(registry, signed, keys.key)
    trusted = {"verify_keys": [str(keys.public)], "insecure_ignore_tlog": True}
    mounted = mounts.mount(f"{REPOSITORY}:moving", **trusted)
    push(registry, REPOSITORY, "moving", unsigned)
    assert (mounted / "weights.bin").read_bytes() == before  # fetched after the move
    with pytest.raises(ModelKitFSError, match=f"{unsigned.digest} is refused"):
        mounts.mount(f"{REPOSITORY}:moving", name="after-the-move", **trusted)
    assert after != before


def test_cat_and_verify_check_a_logged_bundle_behind_the_fallback_tag(
    tmp_path: Path, proxy: CountingProxy, keys: Keys, kits: dict
) -> None:
    tag, data, artifact = kits["bundled"]
    reference = f"{proxy.address}/{tag}"
    flags = ["--plain-http", "--verify-key", str(keys.public), "--trusted-root", str(keys.root)]
    copied = run_cli("cp", *flags, reference, "weights.bin", str(tmp_path), cache=tmp_path / "c")
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "weights.bin").read_bytes() == data
    verified = run_cli("verify", "--json", *flags, reference, cache=tmp_path / "cache")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["digest"] == artifact.digest
    [signer] = report["signers"]
    assert signer["format"] == "bundle" and signer["key_name"] == str(keys.public)
    assert signer["logged_at"] == cosign.NOW.isoformat()

    inspected = run_cli("inspect", "--plain-http", reference, cache=tmp_path / "cache")
    assert "signed    1 bundle signature(s) (not checked: give" in inspected.stdout

    unsigned = f"{proxy.address}/{kits['unsigned'][0]}"
    refused = run_cli("verify", *flags, unsigned, cache=tmp_path / "cache")
    assert_one_line_error(refused, kits["unsigned"][2].digest, "carries no signature")


def test_serve_refuses_an_unsigned_kit_with_eacces(
    tmp_path: Path, proxy: CountingProxy, keys: Keys, kits: dict
) -> None:
    service = Service(tmp_path, tmp_path / "cache", verify_key=keys.public, trusted_root=keys.root)
    try:
        tag, data, _ = kits["signed"]
        assert (service.root / proxy.address / tag / "weights.bin").read_bytes() == data
        with pytest.raises(PermissionError) as refused:
            os.listdir(service.root / proxy.address / kits["unsigned"][0])
        assert refused.value.errno == errno.EACCES
        assert f"{kits['unsigned'][2].digest} is refused" in service.log
        assert "carries no signature" in service.log
    finally:
        service.stop()


def test_inspect_checks_the_signatures_of_the_index_a_kit_was_picked_from(
    tmp_path: Path, registry: str, proxy: CountingProxy, keys: Keys, kits: dict
) -> None:
    """cosign signs the index a tag names; ``mount --label`` serves its entry on that, and
    ``inspect`` says so rather than look for signatures of the entry."""
    _, _, entry = kits["unsigned"]
    index = build_index([(entry, {"quantization": "q8_0"}, None)])
    push(registry, REPOSITORY, "index", index)
    sign_classic(registry, index, keys.key)
    inspected = run_cli(
        "inspect", "--plain-http", "--label", "quantization=q8_0", "--verify-key",
        str(keys.public), "--insecure-ignore-tlog", f"{proxy.address}/{REPOSITORY}:index",
        cache=tmp_path / "cache",
    )  # fmt: skip
    assert inspected.returncode == 0, inspected.stderr
    assert "signed    1 classic signature(s); valid: " in inspected.stdout, inspected.stdout
