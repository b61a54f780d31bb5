"""Policies from cosign's flags and from policy files: what they trust, their digest, a one
line naming what is wrong with a bad one, and which rules judge a kit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modelkitfs.signing import PolicyError, SignatureRefused, load_policy
from modelkitfs.signing.canonical import canonical_json
from modelkitfs.signing.policy import Identity, KeyAuthority, KeylessAuthority
from tests.support import cosign
from tests.unit.signing.doubles import NAME, Signed


@pytest.fixture
def key() -> object:
    return cosign.new_key()


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_no_option_means_no_check() -> None:
    assert load_policy() is None


def test_flags_make_one_rule_for_every_kit(tmp_path: Path) -> None:
    key = cosign.write_public(cosign.new_key(), tmp_path / "cosign.pub")
    root = cosign.trusted_root(tmp_path / "root.json", cosign.Fulcio(), cosign.Rekor())
    policy = load_policy([str(key)], "a@b.example", None, "https://issuer", str(root))
    assert policy is not None
    [rule] = policy.rules
    assert rule.covers("any.registry/any/repository") and rule.mode == "enforce"
    assert isinstance(rule.authorities[0], KeyAuthority)
    assert isinstance(rule.authorities[1], KeylessAuthority)


def test_the_digest_follows_what_is_trusted_not_where_it_lies(tmp_path: Path) -> None:
    key = cosign.new_key()
    first = cosign.write_public(key, tmp_path / "a.pub")
    second = cosign.write_public(key, tmp_path / "b.pub")
    other = cosign.write_public(cosign.new_key(), tmp_path / "c.pub")

    def digest(path: Path, **options: object) -> str:
        policy = load_policy([str(path)], **options)  # type: ignore[arg-type]
        assert policy is not None
        return policy.digest

    assert digest(first, ignore_tlog=True) == digest(second, ignore_tlog=True)
    assert digest(first, ignore_tlog=True) != digest(other, ignore_tlog=True)
    assert digest(first, ignore_tlog=True) != digest(first)


def test_a_policy_file_as_sigstore_writes_it(tmp_path: Path) -> None:
    pem = cosign.public_pem(cosign.new_key()).decode().replace("\n", "\n          ")
    cosign.trusted_root(tmp_path / "root.json", cosign.Fulcio(), cosign.Rekor())
    text = f"""
apiVersion: policy.sigstore.dev/v1beta1
kind: ClusterImagePolicy
metadata: {{name: team}}
spec:
  images: [{{glob: "registry.example/team/*"}}]
  mode: warn
  authorities:
    - key:
        data: |
          {pem}
    - keyless:
        trustedRoot: root.json
        identities:
          - issuer: https://token.actions.githubusercontent.com
            subjectRegExp: ^https://github.com/team/
"""
    policy = load_policy(policy_file=write(tmp_path, "policy.yaml", text))
    assert policy is not None
    [rule] = policy.rules
    assert rule.mode == "warn"
    assert rule.covers("registry.example/team/llm")
    assert not rule.covers("registry.example/team/llm/extra")
    assert not rule.covers("registry.example/other/llm")
    keyless = rule.authorities[1]
    assert isinstance(keyless, KeylessAuthority)
    assert keyless.identities == (
        Identity(None, "^https://github.com/team/", "https://token.actions.githubusercontent.com"),
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("images: [{glob: 'r.example/a:v1'}]\nauthorities: [{key: {data: x}}]", "never trusted"),
        (
            "images: [{glob: '**'}]\nmode: audit\nauthorities: []",
            "mode 'audit': use enforce or warn",
        ),
        ("images: [{glob: '**'}]\nauthorities: []", "give 'authorities'"),
        ("images: [{glob: '**'}]\nauthorities: [{key: {path: none.pub}}]", "cannot be read"),
        ("images: [{glob: '**'}]\nauthorities: [{key: {data: nonsense}}]", "not a PEM public key"),
        (
            "images: [{glob: '**'}]\nauthorities: [{keyless: {identities: [{subject: a}]}}]",
            "issuer",
        ),
        ("images: [{glob: '**'}]\nauthorities: [{key: {date: x}}]", "unknown field(s) date"),
        ("authorities: [{key: {data: x}}]", "give 'images'"),
        ("images: [{glob: '**'}\n", "not YAML"),
    ],
)
def test_a_bad_policy_file_is_one_line_naming_it(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, "policy.yaml", text)
    with pytest.raises(PolicyError) as error:
        load_policy(policy_file=path)
    assert says in str(error.value) and str(error.value).startswith(f"--policy {path}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"identity": "a@b"}, "give both"),
        ({"issuer": "https://i"}, "give both"),
        ({"identity": "a@b", "issuer": "https://i"}, "give --trusted-root FILE"),
        ({"identity": "a", "identity_regexp": "a", "issuer": "i"}, "not both"),
        ({"identity_regexp": "(", "issuer": "i"}, "is not a regular expression"),
        ({"ignore_tlog": True}, "no signer is given"),
        ({"verify_keys": ["/nonexistent.pub"]}, "--verify-key /nonexistent.pub: cannot be read"),
        ({"trusted_root": "/dev/null", "verify_keys": []}, "it is not JSON"),
    ],
)
def test_bad_flags_are_one_line_naming_them(options: dict[str, object], says: str) -> None:
    with pytest.raises(PolicyError, match=f".*{says}".replace("(", "\\(")):
        load_policy(**options)  # type: ignore[arg-type]


def test_a_key_given_as_pem_itself(tmp_path: Path) -> None:
    pem = cosign.public_pem(cosign.new_key()).decode()
    policy = load_policy([pem], ignore_tlog=True)
    assert policy is not None and isinstance(policy.rules[0].authorities[0], KeyAuthority)


def test_canonical_json_orders_keys_by_utf16_and_escapes_minimally() -> None:
    value = {
        "logIndex": 2,
        "body": "é\n",
        "integratedTime": 1,
        "logID": "ab",
        "\U0001f600": 0,
        "\uff00": 0,
    }
    assert (
        canonical_json(value)
        == (
            '{"body":"é\\n","integratedTime":1,"logID":"ab","logIndex":2,"\U0001f600":0,"\uff00":0}'
        ).encode()
    )


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("authorities: [{key: {path: cosign.pub}, attestations: [{name: sbom}]}]", "attestations"),
        ("policy: {type: cue, data: 'x'}\nauthorities: [{key: {path: cosign.pub}}]", "policy"),
    ],
)
def test_a_requirement_of_policy_controller_not_checked_here_is_refused(
    tmp_path: Path, extra: str, field: str
) -> None:
    """An attestation or a CUE/Rego policy a ClusterImagePolicy requires is not checked here:
    ignored, it would serve what the operator's policy refuses."""
    cosign.write_public(cosign.new_key(), tmp_path / "cosign.pub")
    path = write(tmp_path, "policy.yaml", f"images: [{{glob: '**'}}]\n{extra}\n")
    with pytest.raises(
        PolicyError, match=rf"^--policy {path}, policy 1.*unknown field\(s\) {field}:"
    ):
        load_policy(policy_file=path)


@pytest.mark.parametrize("name", ["localhost:443/team/kit", "localhost./team/kit"])
def test_a_registry_on_this_machine_is_not_kits_local_storage(tmp_path: Path, name: str) -> None:
    """``localhost/...`` names kit's local storage; a registry listening on this machine's port
    443 is another source, which a rule for the storage does not cover."""
    cosign.write_public(cosign.new_key(), tmp_path / "cosign.pub")
    text = "images: [{glob: 'localhost/**'}]\nauthorities: [{key: {path: cosign.pub}}]\n"
    policy = load_policy(policy_file=write(tmp_path, "policy.yaml", text))
    assert policy is not None
    assert policy.rules_for("localhost/team/kit") and not policy.rules_for(name)


# --- rules ----------------------------------------------------------------------------------


def policy_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


def test_a_reference_no_glob_covers_is_refused(tmp_path: Path, key) -> None:
    cosign.write_public(key, tmp_path / "cosign.pub")
    policy = load_policy(
        policy_file=policy_file(
            tmp_path,
            "images: [{glob: 'memory.registry/other/*'}]\n"
            "authorities: [{key: {path: cosign.pub}}]\n",
        ),
        ignore_tlog=True,
    )
    kit = Signed()
    kit.classic(cosign.classic(kit.digest, key))
    with pytest.raises(SignatureRefused, match=f"no rule of the signature policy covers {NAME}"):
        kit.verify(policy)


def test_every_covering_rule_must_be_satisfied(tmp_path: Path, key) -> None:
    other = cosign.new_key()
    cosign.write_public(key, tmp_path / "a.pub")
    cosign.write_public(other, tmp_path / "b.pub")
    text = (
        "images: [{glob: 'memory.registry/**'}]\nauthorities: [{key: {path: a.pub}}]\n---\n"
        "images: [{glob: 'memory.registry/team/*'}]\nauthorities: [{key: {path: b.pub}}]\n"
    )
    policy = load_policy(policy_file=policy_file(tmp_path, text), ignore_tlog=True)
    kit = Signed()
    kit.classic(cosign.classic(kit.digest, key))
    with pytest.raises(SignatureRefused, match=r"policy 2 .*not signed by key .*b.pub"):
        kit.verify(policy)
    kit.classic(cosign.classic(kit.digest, key), cosign.classic(kit.digest, other))
    assert len(kit.verify(policy).signers) == 2


def test_a_rule_in_warn_mode_warns(tmp_path: Path, key, caplog) -> None:
    cosign.write_public(key, tmp_path / "cosign.pub")
    text = "images: [{glob: '**'}]\nmode: warn\nauthorities: [{key: {path: cosign.pub}}]\n"
    policy = load_policy(policy_file=policy_file(tmp_path, text), ignore_tlog=True)
    with caplog.at_level(logging.WARNING):
        verdict = Signed().verify(policy)
    assert verdict.signers == [] and "carries no signature" in verdict.warnings[0]
    assert "mode warn: served all the same" in caplog.text


@pytest.mark.parametrize(
    ("glob", "name"),
    [
        ("memory.registry/team/*", "MEMORY.Registry/team/kit"),
        ("memory.registry/team/*", "memory.registry./team/kit"),
        ("memory.registry/team/*", "memory.registry:443/team/kit"),
        ("docker.io/team/*", "index.docker.io/team/kit"),
        ("docker.io/team/*", "registry-1.docker.io/team/kit"),
        ("Index.Docker.io:443/team/*", "docker.io/team/kit"),
    ],
)
def test_a_registry_named_otherwise_is_judged_by_its_own_rules(
    tmp_path: Path, key, glob: str, name: str
) -> None:
    """A host in upper case, with a trailing dot or https's port, or Docker Hub by another of
    its names, is the same registry: its rules cover it, not only a looser '**'."""
    anyone = cosign.new_key()
    cosign.write_public(key, tmp_path / "team.pub")
    cosign.write_public(anyone, tmp_path / "anyone.pub")
    text = (
        f"images: [{{glob: '{glob}'}}]\nauthorities: [{{key: {{path: team.pub}}}}]\n---\n"
        "images: [{glob: '**'}]\nauthorities: [{key: {path: anyone.pub}}]\n"
    )
    policy = load_policy(policy_file=policy_file(tmp_path, text), ignore_tlog=True)
    kit = Signed()
    kit.classic(cosign.classic(kit.digest, anyone))
    with pytest.raises(SignatureRefused, match=r"policy 1 .*not signed by key .*team.pub"):
        kit.verify(policy, name=name)
    kit.classic(cosign.classic(kit.digest, key), cosign.classic(kit.digest, anyone))
    assert len(kit.verify(policy, name=name).signers) == 2
