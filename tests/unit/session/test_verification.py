"""``modelkitfs verify`` as the Python API calls it: the digest a reference resolves to, judged
by the options' signers; here on an OCI layout holding the kit and its signatures, as
``cosign save`` writes one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelkitfs.session.verification import verify
from modelkitfs.signing import PolicyError, SignatureRefused
from tests.support import cosign
from tests.support.kitbuilder import Artifact, write_layout


def signed_layout(folder: Path, key) -> tuple[str, Artifact]:
    kit = Artifact(json.dumps({"schemaVersion": 2, "layers": []}).encode(), b"")
    write_layout(folder, kit, "v1")
    signatures = cosign.signature_manifest([cosign.classic(kit.digest, key)])
    for digest, data in [*signatures.blobs.items(), (signatures.digest, signatures.manifest)]:
        (folder / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    index = json.loads((folder / "index.json").read_text())
    index["manifests"].append(
        {
            "mediaType": signatures.media_type,
            "digest": signatures.digest,
            "size": len(signatures.manifest),
            "annotations": {"org.opencontainers.image.ref.name": cosign.signature_tag(kit.digest)},
        }
    )
    (folder / "index.json").write_text(json.dumps(index))
    return f"oci-layout:{folder}:v1", kit


def test_verify_names_the_digest_and_its_signer(tmp_path: Path) -> None:
    key = cosign.new_key()
    reference, kit = signed_layout(tmp_path / "layout", key)
    public = cosign.write_public(key, tmp_path / "cosign.pub")
    options = {"cache_dir": str(tmp_path / "cache"), "insecure_ignore_tlog": True}
    verdict = verify(reference, verify_keys=[str(public)], **options)
    assert verdict.digest == kit.digest
    [signer] = verdict.signers
    assert signer.key_name == str(public) and signer.format == "classic"
    other = cosign.write_public(cosign.new_key(), tmp_path / "other.pub")
    with pytest.raises(SignatureRefused, match="it is not signed by key"):
        verify(reference, verify_keys=[str(other)], **options)


def test_verify_without_a_signer_says_what_to_give(tmp_path: Path, monkeypatch) -> None:
    for variable in ("COSIGN_KEY", "COSIGN_CERT_IDENTITY", "COSIGN_CERT_OIDC_ISSUER"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(PolicyError, match=r"^verify needs a signer: --verify-key FILE"):
        verify(f"oci-layout:{tmp_path}:v1", cache_dir=str(tmp_path / "cache"))
