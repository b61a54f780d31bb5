"""A manifest digest judged by a policy: each acceptance, and each refusal with its reason."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from modelkitfs.signing import SignatureRefused, load_policy
from modelkitfs.signing.policy import Identity
from tests.support import cosign
from tests.unit.signing.doubles import Signed, key_policy

IDENTITY, ISSUER = "release@example.com", "https://issuer.example"


@pytest.fixture
def key() -> object:
    return cosign.new_key()


def test_a_classic_key_signature_is_accepted(tmp_path: Path, key) -> None:
    kit = Signed()
    kit.classic(cosign.classic(kit.digest, key))
    verdict = kit.verify(key_policy(tmp_path, key, ignore_tlog=True))
    [signer] = verdict.signers
    assert signer.format == "classic" and signer.logged_at is None
    assert signer.key is not None and signer.key.startswith("sha256:")


def test_a_kit_without_signature_is_refused(tmp_path: Path, key) -> None:
    kit = Signed()
    with pytest.raises(
        SignatureRefused, match=r"it carries no signature .*sha256-[0-9a-f]{64}.sig"
    ):
        kit.verify(key_policy(tmp_path, key, ignore_tlog=True))


def test_a_signature_by_another_key_is_refused(tmp_path: Path, key) -> None:
    kit = Signed()
    kit.classic(cosign.classic(kit.digest, cosign.new_key()))
    with pytest.raises(SignatureRefused, match=r"layer 1: it is not signed by key .*key.*pub"):
        kit.verify(key_policy(tmp_path, key, ignore_tlog=True))


def test_a_payload_naming_another_digest_is_refused(tmp_path: Path, key) -> None:
    kit = Signed()
    other = "sha256:" + "ab" * 32
    kit.classic(cosign.classic(kit.digest, key, signed_digest=other))
    with pytest.raises(SignatureRefused, match=f"its payload signs {other}, another manifest"):
        kit.verify(key_policy(tmp_path, key, ignore_tlog=True))


def test_one_valid_signature_among_others_suffices(tmp_path: Path, key) -> None:
    kit = Signed()
    kit.classic(cosign.classic(kit.digest, cosign.new_key()), cosign.classic(kit.digest, key))
    assert len(kit.verify(key_policy(tmp_path, key, ignore_tlog=True)).signers) == 1


def test_a_logged_key_signature_is_accepted_with_the_trusted_root(tmp_path: Path, key) -> None:
    rekor = cosign.Rekor()
    kit = Signed()
    kit.classic(cosign.classic(kit.digest, key, rekor=rekor))
    root = cosign.trusted_root(tmp_path / "root.json", rekor=rekor)
    [signer] = kit.verify(key_policy(tmp_path, key, trusted_root=str(root))).signers
    assert signer.logged_at == cosign.NOW.isoformat()


def test_without_a_trusted_root_the_log_cannot_be_checked(tmp_path: Path, key) -> None:
    kit = Signed()
    kit.classic(cosign.classic(kit.digest, key, rekor=cosign.Rekor()))
    with pytest.raises(SignatureRefused, match="cannot be checked offline without --trusted-root"):
        kit.verify(key_policy(tmp_path, key))


def test_a_log_entry_of_another_signature_is_refused(tmp_path: Path, key) -> None:
    rekor = cosign.Rekor()
    kit = Signed()
    layer = cosign.classic(kit.digest, key)
    other = cosign.classic(kit.digest, key, rekor=rekor)  # ECDSA: another signature
    layer.annotations["dev.sigstore.cosign/bundle"] = other.annotations[
        "dev.sigstore.cosign/bundle"
    ]
    kit.classic(layer)
    root = cosign.trusted_root(tmp_path / "root.json", rekor=rekor)
    with pytest.raises(SignatureRefused, match="its log entry names another signature or signer"):
        kit.verify(key_policy(tmp_path, key, trusted_root=str(root)))


def test_a_log_entry_of_another_payload_is_refused(tmp_path: Path, key) -> None:
    rekor = cosign.Rekor()
    kit = Signed()
    layer = cosign.classic(kit.digest, key)
    body = cosign.hashedrekord(b"another payload", b"sig", cosign.public_pem(key))
    layer.annotations["dev.sigstore.cosign/bundle"] = json.dumps(rekor.entry(body))
    kit.classic(layer)
    root = cosign.trusted_root(tmp_path / "root.json", rekor=rekor)
    with pytest.raises(SignatureRefused, match="its log entry is for another payload"):
        kit.verify(key_policy(tmp_path, key, trusted_root=str(root)))


def test_a_log_entry_of_another_log_is_refused(tmp_path: Path, key) -> None:
    kit = Signed()
    kit.classic(cosign.classic(kit.digest, key, rekor=cosign.Rekor()))
    root = cosign.trusted_root(tmp_path / "root.json", rekor=cosign.Rekor())
    with pytest.raises(SignatureRefused, match=r"from log [0-9a-f]{12}, which the trusted root"):
        kit.verify(key_policy(tmp_path, key, trusted_root=str(root)))


def test_a_forged_log_promise_is_refused(tmp_path: Path, key) -> None:
    rekor = cosign.Rekor()
    kit = Signed()
    layer = cosign.classic(kit.digest, key, rekor=rekor)
    entry = json.loads(layer.annotations["dev.sigstore.cosign/bundle"])
    entry["Payload"]["integratedTime"] += 1  # the promise was for another time
    layer.annotations["dev.sigstore.cosign/bundle"] = json.dumps(entry)
    kit.classic(layer)
    root = cosign.trusted_root(tmp_path / "root.json", rekor=rekor)
    with pytest.raises(SignatureRefused, match="signed entry timestamp does not verify"):
        kit.verify(key_policy(tmp_path, key, trusted_root=str(root)))


# --- keyless --------------------------------------------------------------------------------


def keyless(tmp_path: Path, identity: str = IDENTITY, issuer: str = ISSUER, **kwargs):
    fulcio, rekor = cosign.Fulcio(), cosign.Rekor()
    root = cosign.trusted_root(tmp_path / "root.json", fulcio, rekor)
    policy = load_policy(
        identity=kwargs.pop("policy_identity", identity),
        issuer=kwargs.pop("policy_issuer", issuer),
        identity_regexp=kwargs.pop("identity_regexp", None),
        trusted_root=str(root),
    )
    return fulcio, rekor, policy


def keyless_kit(fulcio, rekor, *, signed_at=cosign.NOW, logged_at=None, **issue) -> Signed:
    kit = Signed()
    key, cert = fulcio.issue(
        issue.pop("identity", IDENTITY), issue.pop("issuer", ISSUER), at=signed_at, **issue
    )
    kit.classic(
        cosign.classic(
            kit.digest,
            key,
            cert=cert,
            chain=fulcio.chain_pem,
            rekor=rekor,
            when=logged_at or signed_at,
        )
    )
    return kit


def test_a_keyless_signature_is_accepted(tmp_path: Path) -> None:
    fulcio, rekor, policy = keyless(tmp_path)
    [signer] = keyless_kit(fulcio, rekor).verify(policy).signers
    assert (signer.identity, signer.issuer) == (IDENTITY, ISSUER)


def test_an_old_fulcio_issuer_extension_is_read(tmp_path: Path) -> None:
    fulcio, rekor, policy = keyless(tmp_path)
    [signer] = keyless_kit(fulcio, rekor, issuer_v1=True).verify(policy).signers
    assert signer.issuer == ISSUER


def test_an_identity_regexp_matches(tmp_path: Path) -> None:
    fulcio, rekor, policy = keyless(
        tmp_path, policy_identity=None, identity_regexp=r"^release@example\.com$"
    )
    assert keyless_kit(fulcio, rekor).verify(policy).signers


@pytest.mark.parametrize(
    ("identity", "issuer"), [("intruder@example.com", ISSUER), (IDENTITY, "https://other.example")]
)
def test_a_certificate_for_another_identity_or_issuer_is_refused(
    tmp_path: Path, identity, issuer
) -> None:
    fulcio, rekor, policy = keyless(tmp_path)
    kit = keyless_kit(fulcio, rekor, identity=identity, issuer=issuer)
    with pytest.raises(
        SignatureRefused,
        match=rf"its certificate is for {identity} \(issuer {issuer}\), not {IDENTITY} from "
        + ISSUER,
    ):
        kit.verify(policy)


def test_a_certificate_outside_its_validity_is_refused(tmp_path: Path) -> None:
    fulcio, rekor, policy = keyless(tmp_path)
    late = cosign.NOW + datetime.timedelta(minutes=11)  # logged after the ten minutes
    kit = keyless_kit(fulcio, rekor, logged_at=late)
    with pytest.raises(SignatureRefused, match="its certificate was not valid when it signed"):
        kit.verify(policy)


def test_a_certificate_of_another_authority_is_refused(tmp_path: Path) -> None:
    _, rekor, policy = keyless(tmp_path)
    kit = keyless_kit(cosign.Fulcio(), rekor)
    with pytest.raises(
        SignatureRefused, match="not issued by a certificate authority of the trusted root"
    ):
        kit.verify(policy)


def test_the_policys_regexps_see_only_certificates_of_the_trusted_root(
    tmp_path: Path, monkeypatch
) -> None:
    """Anyone's own CA may write any name: an unanchored regexp takes quadratic time on a long
    one, so a certificate is matched to the policy's identities only once the root issued it."""
    _, rekor, policy = keyless(tmp_path, policy_identity=None, identity_regexp=r".*@example\.com")
    matched: list[object] = []
    monkeypatch.setattr(Identity, "matches", lambda *args: matched.append(args) or False)
    kit = keyless_kit(cosign.Fulcio(), rekor, identity="a" * 10_000 + "@elsewhere.example")
    with pytest.raises(
        SignatureRefused, match="not issued by a certificate authority of the trusted root"
    ):
        kit.verify(policy)
    assert matched == []


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ("certificateAuthorities", "not issued by a certificate authority of the trusted root"),
        ("tlogs", "which the trusted root does not hold for"),
    ],
)
def test_a_ca_or_log_the_root_retired_before_the_signing_is_refused(
    tmp_path: Path, section: str, says: str
) -> None:
    fulcio, rekor, _ = keyless(tmp_path)
    path = tmp_path / "root.json"
    root = json.loads(path.read_text())
    entry = root[section][0]
    window = entry["publicKey"]["validFor"] if section == "tlogs" else entry["validFor"]
    window["end"] = (cosign.NOW - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(json.dumps(root))
    policy = load_policy(identity=IDENTITY, issuer=ISSUER, trusted_root=str(path))
    with pytest.raises(SignatureRefused, match=says):
        keyless_kit(fulcio, rekor).verify(policy)


def test_a_certificate_not_for_code_signing_is_refused(tmp_path: Path) -> None:
    fulcio, rekor, policy = keyless(tmp_path)
    with pytest.raises(SignatureRefused, match="its certificate is not for code signing"):
        keyless_kit(fulcio, rekor, code_signing=False).verify(policy)


def test_a_keyless_signature_by_another_key_than_its_certificates_is_refused(
    tmp_path: Path,
) -> None:
    """A certificate names its key: a signature by another, even logged with the certificate
    by a log that did not check it, is none of its signer's."""
    fulcio, rekor, policy = keyless(tmp_path)
    kit = Signed()
    _, cert = fulcio.issue(IDENTITY, ISSUER)
    other = cosign.new_key()
    kit.classic(cosign.classic(kit.digest, other, cert=cert, chain=fulcio.chain_pem, rekor=rekor))
    with pytest.raises(SignatureRefused, match="does not verify with its certificate's key"):
        kit.verify(policy)


def test_a_key_signature_is_no_keyless_one(tmp_path: Path, key) -> None:
    _, rekor, policy = keyless(tmp_path)
    kit = Signed()
    kit.classic(cosign.classic(kit.digest, key, rekor=rekor))
    with pytest.raises(SignatureRefused, match="it carries no certificate"):
        kit.verify(policy)


# --- bundles --------------------------------------------------------------------------------


def test_a_key_signed_bundle_behind_the_fallback_tag_is_accepted(tmp_path: Path, key) -> None:
    rekor = cosign.Rekor()
    kit = Signed()
    kit.bundles(cosign.bundle(kit.digest, key, rekor=rekor))
    root = cosign.trusted_root(tmp_path / "root.json", rekor=rekor)
    [signer] = kit.verify(key_policy(tmp_path, key, trusted_root=str(root))).signers
    assert signer.format == "bundle" and signer.logged_at


def test_a_bundle_from_the_referrers_api_is_accepted(tmp_path: Path, key) -> None:
    kit = Signed()
    kit.bundles(cosign.bundle(kit.digest, key), fallback=False)
    assert kit.verify(key_policy(tmp_path, key, ignore_tlog=True)).signers


def test_a_keyless_bundle_is_accepted(tmp_path: Path) -> None:
    fulcio, rekor, policy = keyless(tmp_path)
    kit = Signed()
    signing_key, cert = fulcio.issue(IDENTITY, ISSUER)
    kit.bundles(cosign.bundle(kit.digest, signing_key, rekor=rekor, cert=cert))
    [signer] = kit.verify(policy).signers
    assert signer.identity == IDENTITY and signer.format == "bundle"


def test_an_attestation_is_no_signature(tmp_path: Path, key) -> None:
    kit = Signed()
    kit.bundles(cosign.bundle(kit.digest, key, predicate_type="https://slsa.dev/provenance/v1"))
    with pytest.raises(
        SignatureRefused, match="provenance/v1' attestation, not a cosign signature"
    ):
        kit.verify(key_policy(tmp_path, key, ignore_tlog=True))


def test_a_dsse_envelope_of_another_payload_type_is_refused(tmp_path: Path, key) -> None:
    """The statement is signed as an in-toto statement or it is no statement at all (the
    signature over DSSE's encoding binds the type it was made for)."""
    kit = Signed()
    document = json.loads(cosign.bundle(kit.digest, key))
    envelope = document["dsseEnvelope"]
    envelope["payloadType"] = "application/vnd.example.other+json"
    signed = cosign.pae(envelope["payloadType"], cosign.statement(kit.digest))
    envelope["signatures"] = [{"sig": cosign.b64(cosign.sign(key, signed))}]
    kit.bundles(json.dumps(document).encode())
    with pytest.raises(SignatureRefused, match="other\\+json', not an in-toto statement"):
        kit.verify(key_policy(tmp_path, key, ignore_tlog=True))


def test_a_bundle_about_another_manifest_is_refused(tmp_path: Path, key) -> None:
    kit = Signed()
    kit.bundles(cosign.bundle("sha256:" + "cd" * 32, key))
    with pytest.raises(SignatureRefused, match=r"its statement is about cdcd.*, not sha256:"):
        kit.verify(key_policy(tmp_path, key, ignore_tlog=True))


def test_a_bundle_holds_one_signature(tmp_path: Path, key) -> None:
    """As sigstore's bundle format says: an envelope of a thousand signatures would cost a
    thousand checks of each authority."""
    kit = Signed()
    document = json.loads(cosign.bundle(kit.digest, key))
    document["dsseEnvelope"]["signatures"] *= 1000
    kit.bundles(json.dumps(document).encode())
    with pytest.raises(SignatureRefused, match="its DSSE envelope holds 1000 signatures, not one"):
        kit.verify(key_policy(tmp_path, key, ignore_tlog=True))


def test_a_bundle_by_another_key_is_refused(tmp_path: Path, key) -> None:
    kit = Signed()
    kit.bundles(cosign.bundle(kit.digest, cosign.new_key()))
    with pytest.raises(
        SignatureRefused, match=r"bundle sha256:[0-9a-f]{12}: it is not signed by key"
    ):
        kit.verify(key_policy(tmp_path, key, ignore_tlog=True))
