"""A publish request's attributes and secrets, read into a spec and a login (per host)."""

from __future__ import annotations

import base64
import json

import pytest

from modelkitfs.csi.volume_spec import InvalidVolume, VolumeSpec, parse_volume, service_path

REF = "registry.example:5000/team/llm:v1"
DIGEST = "sha256:" + "a" * 64
POD = {
    "csi.storage.k8s.io/pod.name": "web-0",
    "csi.storage.k8s.io/pod.namespace": "ml",
    "csi.storage.k8s.io/ephemeral": "true",
}


def test_attributes_and_the_pod_s_keys() -> None:
    context = {
        **POD,
        "reference": REF,
        "filter": "model,datasets:train; docs",
        "label": "arch=x86, size=7b",
        "plainHTTP": "True",
        "timeout": "12.5",
    }
    spec, login, pod = parse_volume(context, {})
    assert spec == VolumeSpec(
        REF, ["model,datasets:train", "docs"], ["arch=x86", "size=7b"], True, 12.5, False
    )
    assert login is None
    assert pod == {"pod.name": "web-0", "pod.namespace": "ml", "ephemeral": "true"}


def test_only_the_reference_is_required() -> None:
    spec, _, _ = parse_volume({"reference": REF}, {})
    assert spec == VolumeSpec(REF)
    assert spec.as_dict()["plain_http"] is None  # the plugin's setting applies


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({}, "the volume has no 'reference' attribute: set volumeAttributes.reference to the kit"),
        ({"reference": " "}, "the volume has no 'reference' attribute"),
        ({"reference": "Team/LLM"}, "volume attribute 'reference': invalid repository 'Team/LLM'"),
        ({"reference": "../etc/x:v1"}, "volume attribute 'reference' '../etc/x:v1': '..' is no"),
        ({"reference": "oci-layout:/srv/kit:v1"}, "volume attribute 'reference' 'oci-layout:/srv"),
        ({"reference": REF, "filter": "weights"}, "volume attribute 'filter' or 'label': Invalid"),
        ({"reference": REF, "label": "novalue"}, "volume attribute 'filter' or 'label': "),
        ({"reference": REF, "plainHTTP": "yes"}, "volume attribute 'plainHTTP' is 'yes': write"),
        ({"reference": REF, "timeout": "0"}, "volume attribute 'timeout' is '0': write a positive"),
        ({"reference": REF, "timeout": "inf"}, "volume attribute 'timeout' is 'inf'"),
        (
            {"reference": REF, "Filter": "model"},
            "unknown volume attribute(s) Filter: use reference",
        ),
    ],
)
def test_malformed_attributes_say_which_and_what_to_write(
    context: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidVolume) as raised:
        parse_volume(context, {})
    assert str(raised.value).startswith(message)


def test_username_and_password_are_for_the_kit_s_registry_alone() -> None:
    spec, login, _ = parse_volume({"reference": REF}, {"username": "ada", "password": "pw"})
    assert spec.credentials is True and login is not None
    credential = login.credential("registry.example:5000")
    assert credential is not None and (credential.username, credential.secret) == ("ada", "pw")
    assert login.credential("other.example") is None  # a model.path elsewhere, a mirror
    assert "pw" not in repr(login) and "pw" not in repr(credential)


def docker_config(auths: dict[str, dict[str, str]]) -> dict[str, str]:
    return {".dockerconfigjson": json.dumps({"auths": auths})}


def test_a_docker_config_is_kept_whole_each_entry_for_its_host() -> None:
    auth = base64.b64encode(b"ada:pw").decode()
    auths = {"other.example": {"auth": "eDp5"}, "https://registry.example:5000/v2/": {"auth": auth}}
    _, login, _ = parse_volume({"reference": REF}, docker_config(auths))
    assert login is not None
    mine, other = login.credential("registry.example:5000"), login.credential("other.example")
    assert mine is not None and (mine.username, mine.secret) == ("ada", "pw")
    assert other is not None and (other.username, other.secret) == ("x", "y")
    assert login.credential("third.example") is None
    # The daemon is given the entries whole (in its environment), to look each host up.
    assert json.loads(login.environment()["MODELKITFS_AUTH_CONFIG"]) == {"auths": auths}


def test_a_docker_config_without_the_kit_s_registry_still_logs_in_elsewhere() -> None:
    spec, login, _ = parse_volume(
        {"reference": REF}, docker_config({"other.example": {"auth": "eDp5"}})
    )
    assert login is not None and login.credential("registry.example:5000") is None
    assert spec.credentials is True  # a mount of its own: the node service has no such login
    spec, login, _ = parse_volume({"reference": REF}, docker_config({}))
    assert login is None and spec.credentials is False


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({"username": "ada"}, "the volume's nodePublishSecretRef: give both 'username' and"),
        ({"password": "pw"}, "the volume's nodePublishSecretRef: give both"),
        ({"token": "x"}, "the volume's nodePublishSecretRef holds neither 'username'/'password'"),
        ({".dockerconfigjson": "{"}, "the volume's nodePublishSecretRef: .dockerconfigjson is not"),
        (
            docker_config({"registry.example:5000": {"identitytoken": "t"}}),
            "the volume's nodePublishSecretRef: the entry for registry.example:5000 holds an",
        ),
    ],
)
def test_malformed_secrets_never_show_their_values(secrets: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidVolume) as raised:
        parse_volume({"reference": REF}, secrets)
    assert str(raised.value).startswith(message)
    for value in secrets.values():
        assert len(value) < 3 or value not in str(raised.value)


@pytest.mark.parametrize(
    ("reference", "path"),
    [
        (REF, REF),
        ("registry.example/llm", "registry.example/llm:latest"),
        (
            "registry.example/llm:v1@sha256:" + "a" * 64,
            "registry.example/llm:v1@sha256:" + "a" * 64,
        ),
        ("mykit:v1", "mykit:v1"),  # kit's local storage: no registry in the path
        ("team/mykit", "team/mykit:latest"),
    ],
)
def test_where_the_node_service_shows_a_kit(reference: str, path: str) -> None:
    assert service_path(reference) == path


def test_a_volume_may_name_signers_its_kit_needs() -> None:
    from tests.support import cosign

    pem = cosign.public_pem(cosign.new_key()).decode()
    context = {
        "reference": REF,
        "verifyKey": pem,
        "certificateIdentity": "ci@example.com",
        "certificateOidcIssuer": "https://issuer.example",
    }
    spec, _, _ = parse_volume(context, {})
    assert spec.signers == {
        "verify_keys": [pem.strip()],
        "certificate_identity": "ci@example.com",
        "certificate_oidc_issuer": "https://issuer.example",
    }
    assert parse_volume({"reference": REF}, {})[0].signers == {}


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"verifyKey": "cosign.pub"}, "volume attribute 'verifyKey': not a PEM public key"),
        ({"certificateIdentity": "ci@example.com"}, "volume attributes 'certificateIdentity' and"),
        ({"certificateOidcIssuer": "https://i"}, "volume attributes 'certificateIdentity' and"),
    ],
)
def test_malformed_signers_say_what_to_write(context: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidVolume, match=f"^{message}"):
        parse_volume({"reference": REF, **context}, {})
