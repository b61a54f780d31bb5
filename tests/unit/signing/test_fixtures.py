"""Real signatures made by cosign (containers/image's fixtures, Apache-2.0: see
tests/fixtures/cosign/containers-image/README.md), checked as the registry's would be."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from modelkitfs.primitives.digests import sha256_digest
from modelkitfs.signing.candidates import Candidate
from modelkitfs.signing.classic import from_layer
from modelkitfs.signing.policy import load_policy
from modelkitfs.signing.rekor import Refusal
from modelkitfs.signing.verifier import accept

FIXTURES = Path(__file__).parents[2] / "fixtures" / "cosign" / "containers-image"
IDENTITY, ISSUER = "mitr@redhat.com", "https://github.com/login/oauth"


def signature(folder: str, manifest: str | None = None, name: str = "signature-1") -> Candidate:
    """The signature stored in ``folder`` as the layer of a .sig manifest, as a signature of
    ``manifest`` (default: the folder's own)."""
    raw = (FIXTURES / folder / name).read_bytes().removeprefix(b"\x00sigstore-json\n")
    document = json.loads(raw)
    signed = (FIXTURES / (manifest or folder) / "manifest.json").read_bytes()
    payload = base64.b64decode(document["payload"])
    return from_layer(payload, document["annotations"], sha256_digest(signed), name)


def production_root(tmp_path: Path) -> Path:
    """A trusted_root.json of the production Fulcio chain and Rekor key the fixtures used."""
    chain = x509.load_pem_x509_certificates((FIXTURES / "fulcio-chain").read_bytes())
    rekor = serialization.load_pem_public_key((FIXTURES / "rekor.pub").read_bytes())
    der = rekor.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    document = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [
            {
                "publicKey": {
                    "rawBytes": base64.b64encode(der).decode(),
                    "validFor": {"start": "2021-01-12T11:53:27.000Z"},
                }
            }
        ],
        "certificateAuthorities": [
            {
                "certChain": {
                    "certificates": [
                        {
                            "rawBytes": base64.b64encode(
                                c.public_bytes(serialization.Encoding.DER)
                            ).decode()
                        }
                        for c in chain
                    ]
                },
                "validFor": {"start": "2022-04-13T20:06:15.000Z"},
            }
        ],
    }
    path = tmp_path / "trusted_root.json"
    path.write_text(json.dumps(document))
    return path


def test_a_key_signature_made_by_cosign_verifies() -> None:
    policy = load_policy([str(FIXTURES / "cosign.pub")], ignore_tlog=True)
    assert policy is not None
    signer = accept(signature("dir-img-cosign-valid"), policy.rules[0].authorities[0], True)
    assert signer.key and signer.key_name == str(FIXTURES / "cosign.pub")


def test_a_key_signature_with_its_rekor_entry_verifies_offline(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    policy = load_policy([str(FIXTURES / "cosign2.pub")], trusted_root=str(root))
    assert policy is not None
    signer = accept(
        signature("dir-img-cosign-key-rekor-valid"), policy.rules[0].authorities[0], False
    )
    assert signer.logged_at == "2023-01-20T21:57:39+00:00"


def test_a_keyless_signature_verifies_against_the_production_root(tmp_path: Path) -> None:
    root = production_root(tmp_path)
    policy = load_policy(identity=IDENTITY, issuer=ISSUER, trusted_root=str(root))
    assert policy is not None
    signer = accept(
        signature("dir-img-cosign-fulcio-rekor-valid"), policy.rules[0].authorities[0], False
    )
    assert (signer.identity, signer.issuer) == (IDENTITY, ISSUER)


@pytest.mark.parametrize(
    ("identity", "issuer"),
    [("someone@redhat.com", ISSUER), (IDENTITY, "https://accounts.google.com")],
)
def test_a_keyless_signature_of_another_identity_or_issuer_is_refused(
    tmp_path: Path, identity: str, issuer: str
) -> None:
    policy = load_policy(
        identity=identity, issuer=issuer, trusted_root=str(production_root(tmp_path))
    )
    assert policy is not None
    with pytest.raises(Refusal, match=f"its certificate is for {IDENTITY} \\(issuer {ISSUER}\\)"):
        accept(
            signature("dir-img-cosign-fulcio-rekor-valid"), policy.rules[0].authorities[0], False
        )


def test_a_signature_of_another_manifest_is_refused() -> None:
    policy = load_policy([str(FIXTURES / "cosign.pub")], ignore_tlog=True)
    assert policy is not None
    candidate = signature("dir-img-cosign-valid", manifest="dir-img-cosign-modified-manifest")
    with pytest.raises(Refusal, match=r"its payload signs sha256:634a8f35.*another manifest"):
        accept(candidate, policy.rules[0].authorities[0], True)


def test_a_signature_by_an_unknown_key_is_refused() -> None:
    policy = load_policy([str(FIXTURES / "cosign.pub")], ignore_tlog=True)
    assert policy is not None
    candidate = signature("dir-img-cosign-valid", name="../unknown-cosign-key.signature")
    with pytest.raises(Refusal, match=r"it is not signed by key .*cosign.pub"):
        accept(candidate, policy.rules[0].authorities[0], True)
