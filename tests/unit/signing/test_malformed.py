"""Malformed signatures pushed beside a kit (JSON nested past the parser's recursion, times no
datetime holds, text that is no text, mappings that are lists): each is refused alone, in one
line, and a valid signature beside it still counts; none ends the whole check with a
traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelkitfs.signing import SignatureRefused
from tests.support import cosign
from tests.unit.signing.doubles import Signed, key_policy


@pytest.fixture
def key() -> object:
    return cosign.new_key()


BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
DEEP = b"[" * 100_000  # JSON nested past Python's recursion limit


def with_entry(layer: cosign.Layer, change) -> cosign.Layer:
    entry = json.loads(layer.annotations[BUNDLE_ANNOTATION])
    change(entry["Payload"])
    return cosign.Layer(layer.payload, {**layer.annotations, BUNDLE_ANNOTATION: json.dumps(entry)})


def with_annotation(layer: cosign.Layer, text: str) -> cosign.Layer:
    return cosign.Layer(layer.payload, {**layer.annotations, BUNDLE_ANNOTATION: text})


MALFORMED_CLASSIC = {
    "an infinite time": lambda layer, rekor: with_annotation(
        layer,
        layer.annotations[BUNDLE_ANNOTATION].replace(
            '"integratedTime": ', '"integratedTime": 1e400, "x": '
        ),
    ),
    "a time past the year 9999": lambda layer, rekor: with_entry(
        layer, lambda p: p.update(integratedTime=10**30)
    ),
    "a time before the year 1": lambda layer, rekor: with_entry(
        layer, lambda p: p.update(integratedTime=-(10**15))
    ),
    "a body that is no text": lambda layer, rekor: with_entry(
        layer, lambda p: p.update(body="\ud800")
    ),
    "a log entry nested too deep": lambda layer, rekor: with_annotation(layer, DEEP.decode()),
    "a logged body nested too deep": lambda layer, rekor: with_annotation(
        layer, json.dumps(rekor.entry(DEEP))
    ),
    "a payload nested too deep": lambda layer, rekor: cosign.Layer(DEEP, layer.annotations),
    "annotations that are no mapping": lambda layer, rekor: cosign.Layer(
        layer.payload,
        [layer.annotations],  # type: ignore[arg-type]
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_CLASSIC))
def test_a_malformed_classic_signature_is_refused_alone(tmp_path: Path, key, case: str) -> None:
    rekor = cosign.Rekor()
    kit = Signed()
    bad = MALFORMED_CLASSIC[case](cosign.classic(kit.digest, key, rekor=rekor), rekor)
    root = cosign.trusted_root(tmp_path / "root.json", rekor=rekor)
    policy = key_policy(tmp_path, key, trusted_root=str(root))
    kit.classic(bad)
    with pytest.raises(SignatureRefused, match="none of its 1 signature is by a signer"):
        kit.verify(policy)
    kit.classic(bad, cosign.classic(kit.digest, key, rekor=rekor))
    assert len(kit.verify(policy).signers) == 1


def malformed_bundle(digest: str, key, rekor: cosign.Rekor, case: str) -> bytes:
    document = json.loads(cosign.bundle(digest, key, rekor=rekor))
    if case == "a bundle nested too deep":
        return DEEP
    if case == "a statement nested too deep":
        document["dsseEnvelope"]["payload"] = cosign.b64(DEEP)
    if case == "log entries that are no list":
        document["verificationMaterial"]["tlogEntries"] = {"0": {}}
    if case == "verification material that is no mapping":
        document["verificationMaterial"] = [document["verificationMaterial"]]
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "case",
    [
        "a bundle nested too deep",
        "a statement nested too deep",
        "log entries that are no list",
        "verification material that is no mapping",
    ],
)
def test_a_malformed_bundle_is_refused_alone(tmp_path: Path, key, case: str) -> None:
    rekor = cosign.Rekor()
    kit = Signed()
    root = cosign.trusted_root(tmp_path / "root.json", rekor=rekor)
    policy = key_policy(tmp_path, key, trusted_root=str(root))
    kit.bundles(malformed_bundle(kit.digest, key, rekor, case))
    with pytest.raises(SignatureRefused, match="none of its 1 signature is by a signer"):
        kit.verify(policy)
    kit.bundles(
        malformed_bundle(kit.digest, key, rekor, case), cosign.bundle(kit.digest, key, rekor=rekor)
    )
    assert len(kit.verify(policy).signers) == 1


def test_a_refusal_stays_one_short_line_whatever_a_signature_says(tmp_path: Path, key) -> None:
    """What a signature says is quoted in the refusal and the log: its line breaks must not
    start lines of their own (a forged 'is signed by' line), nor its size make the line huge."""
    kit = Signed()
    forged = "sha256:0\n2024-01-01 INFO modelkitfs: forged line " + "x" * 10_000
    kit.classic(cosign.classic(kit.digest, key, signed_digest=forged))
    with pytest.raises(SignatureRefused) as refused:
        kit.verify(key_policy(tmp_path, key, ignore_tlog=True))
    message = str(refused.value)
    assert "\n" not in message and "forged line" in message and len(message) < 2000
