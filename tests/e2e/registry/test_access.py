"""Registries as people run them: Basic and token auth, TLS, redirects to object storage,
mirrors. Real registries (htpasswd, token mode, TLS, client certificates), real mounts."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelkitfs import ModelKitFSError
from tests.conftest import MiB, Mounts, write
from tests.support.kitbuilder import Artifact, build_modelkit, push
from tests.support.pki import CA
from tests.support.redirect_server import RedirectingProxy
from tests.support.registry_server import RegistryAuth, running_registry, tls_context
from tests.support.token_issuer import TokenIssuer
from tests.support.waiting import wait_for

USERS = {"alice": "wonderland"}
REPO = "team/llm"


@pytest.fixture(scope="module")
def weights() -> bytes:
    return np.random.default_rng(7).bytes(24 * MiB + 123)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, weights: bytes) -> Artifact:
    source = tmp_path_factory.mktemp("access-kit")
    write(source / "model/weights.bin", weights)
    write(source / "README.md", b"# access\n")
    kitfile = {
        "manifestVersion": "1.0.0",
        "model": {"path": "model"},
        "docs": [{"path": "README.md"}],
    }
    return build_modelkit(source, kitfile)


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty kit and Docker homes, no credential variables: what the test writes is all."""
    for name in ("MODELKITFS_USERNAME", "MODELKITFS_PASSWORD", "KITOPS_CLIENT_CERT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KITOPS_HOME", str(tmp_path / "kitops"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return tmp_path / "kitops"


def kit_login(home: Path, registry: str, user: str, password: str) -> None:
    """What 'kit login' leaves behind: Docker's config format in <kit home>/credentials.json."""
    home.mkdir(parents=True, exist_ok=True)
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    (home / "credentials.json").write_text(json.dumps({"auths": {registry: {"auth": encoded}}}))


def mount_error(mounts: Mounts, repo_tag: str, **options) -> str:
    with pytest.raises(ModelKitFSError) as caught:
        mounts.mount(repo_tag, name=f"failed{len(mounts.mounted)}-{time.monotonic_ns()}", **options)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture
def basic_registry(tmp_path: Path, kit: Artifact) -> Iterator[str]:
    with running_registry(mkdir(tmp_path / "basic"), htpasswd=USERS) as address:
        push(address, REPO, "v1", kit, auth=RegistryAuth("alice", "wonderland"))
        yield address


def test_basic_auth_with_kit_login_credentials(
    basic_registry: str, no_credentials: Path, mounts: Mounts, weights: bytes
) -> None:
    kit_login(no_credentials, basic_registry, "alice", "wonderland")
    mountpoint = mounts.mount(f"{REPO}:v1", registry=basic_registry)
    assert (mountpoint / "model/weights.bin").read_bytes() == weights


def test_basic_auth_errors_name_the_fix(
    basic_registry: str, no_credentials: Path, mounts: Mounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = mount_error(mounts, f"{REPO}:v1", registry=basic_registry)
    assert "requires login" in message and "kit login" in message
    kit_login(no_credentials, basic_registry, "alice", "looking-glass")
    message = mount_error(mounts, f"{REPO}:v1", registry=basic_registry)
    assert "refused the credentials of 'alice'" in message and "credentials.json" in message
    assert "kit login" in message and "looking-glass" not in message
    monkeypatch.setenv("MODELKITFS_USERNAME", "alice")
    monkeypatch.setenv("MODELKITFS_PASSWORD", "wonderland")  # the environment wins
    mounts.mount(f"{REPO}:v1", registry=basic_registry)


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[TokenIssuer]:
    with TokenIssuer(tmp_path / "issuer", USERS) as running:
        yield running


@pytest.fixture
def token_registry(tmp_path: Path, issuer: TokenIssuer, kit: Artifact) -> Iterator[str]:
    with running_registry(mkdir(tmp_path / "token"), token=issuer) as address:
        push(address, REPO, "v1", kit, auth=RegistryAuth("alice", "wonderland"))
        issuer.reset()
        yield address


def test_token_auth_renews_an_expired_token_without_failing_reads(
    token_registry: str,
    issuer: TokenIssuer,
    no_credentials: Path,
    mounts: Mounts,
    weights: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELKITFS_USERNAME", "alice")
    monkeypatch.setenv("MODELKITFS_PASSWORD", "wonderland")
    issuer.lifetime = 2
    mountpoint = mounts.mount(f"{REPO}:v1", registry=token_registry)
    with open(mountpoint / "model/weights.bin", "rb") as f:
        assert f.read(MiB) == weights[:MiB]
        tokens = issuer.requests
        assert tokens >= 1 and set(issuer.subjects) == {"alice"}
        # A token issued now expires no earlier than the mount's: once the registry refuses
        # it, it refuses the mount's too.
        probe = issuer.make_token("alice", issuer.grant("alice", [f"repository:{REPO}:pull"]))
        wait_until_refused(token_registry, probe)
        assert f.read() == weights[MiB:]
    assert issuer.requests > tokens  # renewed, and no read failed


def wait_until_refused(registry: str, token: str, seconds: float = 60) -> None:
    """Poll the registry with ``token`` until it answers 401 (``seconds`` bounds the loop)."""
    url = f"http://{registry}/v2/{REPO}/manifests/v1"
    wait_for(
        lambda: httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 401,
        "the registry refuses the expired token",
        seconds,
    )


def test_token_auth_errors(
    token_registry: str,
    issuer: TokenIssuer,
    no_credentials: Path,
    mounts: Mounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = mount_error(mounts, f"{REPO}:v1", registry=token_registry)
    assert "refused anonymous access" in message and "kit login" in message
    monkeypatch.setenv("MODELKITFS_USERNAME", "alice")
    monkeypatch.setenv("MODELKITFS_PASSWORD", "wrong")
    message = mount_error(mounts, f"{REPO}:v1", registry=token_registry)
    assert "refused the credentials of 'alice'" in message and "MODELKITFS_USERNAME" in message
    issuer.anonymous_pull = True  # a public repository: no credentials needed at all
    monkeypatch.delenv("MODELKITFS_USERNAME")
    mounts.mount(f"{REPO}:v1", registry=token_registry)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA.create(tmp_path_factory.mktemp("pki"))


def test_tls_verify_extra_ca_and_skip(
    tmp_path: Path, pki: CA, kit: Artifact, no_credentials: Path, mounts: Mounts, weights: bytes
) -> None:
    with running_registry(mkdir(tmp_path / "tls"), tls=pki.issue("registry")) as address:
        push(address, REPO, "v1", kit, tls=tls_context(pki.cert_path))
        message = mount_error(mounts, f"{REPO}:v1", registry=address, plain_http=False)
        assert "not trusted" in message and "--tls-cert" in message
        trusted = mounts.mount(
            f"{REPO}:v1", registry=address, plain_http=False, tls_cert=str(pki.cert_path)
        )
        assert (trusted / "model/weights.bin").read_bytes() == weights
        unverified = mounts.mount(
            f"{REPO}:v1", registry=address, plain_http=False, tls_verify=False
        )
        assert (unverified / "README.md").read_bytes() == b"# access\n"
        message = mount_error(mounts, f"{REPO}:v1", registry=address)  # plain HTTP to TLS
        assert "cannot reach registry" in message or "HTTP 400" in message


def test_tls_client_certificates(
    tmp_path: Path, pki: CA, kit: Artifact, no_credentials: Path, mounts: Mounts, weights: bytes
) -> None:
    client = pki.issue("client", client=True)
    tls = pki.issue("registry-mtls")
    with running_registry(mkdir(tmp_path / "mtls"), tls=tls, client_ca=pki.cert_path) as address:
        push(address, REPO, "v1", kit, tls=tls_context(pki.cert_path, client))
        common = {"registry": address, "plain_http": False, "tls_cert": str(pki.cert_path)}
        message = mount_error(mounts, f"{REPO}:v1", **common)
        assert "client certificate" in message and "--cert" in message
        mountpoint = mounts.mount(f"{REPO}:v1", cert=str(client[0]), key=str(client[1]), **common)
        assert (mountpoint / "model/weights.bin").read_bytes() == weights


def test_unknown_host(mounts: Mounts, no_credentials: Path) -> None:
    message = mount_error(mounts, f"{REPO}:v1", registry="no-such-host.invalid")
    assert "unknown host no-such-host.invalid" in message and "registry name" in message


@pytest.mark.parametrize("honour_range", [True, False])
def test_redirects_to_object_storage_never_carry_credentials(
    basic_registry: str,
    kit: Artifact,
    no_credentials: Path,
    mounts: Mounts,
    weights: bytes,
    monkeypatch: pytest.MonkeyPatch,
    honour_range: bool,
) -> None:
    monkeypatch.setenv("MODELKITFS_USERNAME", "alice")
    monkeypatch.setenv("MODELKITFS_PASSWORD", "wonderland")
    with RedirectingProxy(basic_registry, honour_range=honour_range) as proxy:
        mountpoint = mounts.mount(f"{REPO}:v1", registry=proxy.address)
        with open(mountpoint / "model/weights.bin", "rb", buffering=0) as f:
            assert f.read(4 * MiB) == weights[: 4 * MiB]  # in order: what follows comes ahead
            assert proxy.redirects <= len(kit.blobs)  # one per blob, reused for later ranges
            if honour_range:
                assert proxy.blob_requests > proxy.redirects
                redirects = proxy.redirects
                proxy.expire_urls()  # signed URLs time out: resolve once more, then go on
            f.seek(20 * MiB)
            assert f.read() == weights[20 * MiB :]
            if honour_range:
                assert proxy.redirects == redirects + 1
        if not honour_range:  # a store that ignores Range: each blob crosses once, in order
            assert proxy.blob_bytes < sum(len(b) for b in kit.blobs.values()) + 16 * MiB
        assert proxy.authorizations_seen == []


def test_mirror_first_then_the_origin(
    tmp_path: Path, kit: Artifact, publish, proxy, mounts: Mounts, weights: bytes
) -> None:
    reference = publish(kit, REPO, "mirrored")
    with running_registry(mkdir(tmp_path / "mirror")) as mirror:
        push(mirror, REPO, "mirrored", kit)
        proxy.reset()
        mountpoint = mounts.mount(reference, mirrors=[mirror])
        assert (mountpoint / "model/weights.bin").read_bytes() == weights
        assert proxy.blob_bytes == 0 and proxy.manifest_requests == 0  # all from the mirror

    # The mirror is gone (and another lacks the kit): the origin serves, reads do not fail.
    with running_registry(mkdir(tmp_path / "empty-mirror")) as empty:
        proxy.reset()
        mountpoint = mounts.mount(reference, mirrors=[mirror, empty], cache_dir=tmp_path / "c2")
        assert (mountpoint / "model/weights.bin").read_bytes() == weights
        assert proxy.blob_bytes >= len(weights)


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
