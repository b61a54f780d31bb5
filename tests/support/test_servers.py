"""The test servers themselves, against the real registry with plain httpx: every auth and TLS
mode pushes and pulls a blob, refuses what it should, and the redirecting proxy behaves like a
registry in front of object storage."""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.link_proxy import LinkProxy
from tests.support.pki import CA
from tests.support.redirect_server import RedirectingProxy
from tests.support.registry_server import (
    RegistryAuth,
    running_registry,
    tls_context,
    write_htpasswd,
)
from tests.support.token_issuer import TokenIssuer
from tests.support.waiting import wait_for

USERS = {"alice": "wonderland"}
REPO = "team/model"
DATA = bytes(range(256)) * 40


def push_blob(client: httpx.Client, data: bytes = DATA, repo: str = REPO) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = client.post(f"/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202, start.text
    location = httpx.URL(start.headers["Location"]).copy_merge_params({"digest": digest})
    done = client.put(location, content=data)
    assert done.status_code == 201, done.text
    return digest


def pull_blob(client: httpx.Client, digest: str, repo: str = REPO) -> httpx.Response:
    return client.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)


def round_trip(
    base: str, auth: httpx.Auth | None = None, verify: ssl.SSLContext | bool = True
) -> str:
    """Push a blob and pull it back; returns its digest."""
    with httpx.Client(base_url=base, auth=auth, verify=verify, timeout=10) as client:
        digest = push_blob(client)
        pulled = pull_blob(client, digest)
        assert pulled.status_code == 200
        assert pulled.content == DATA
        return digest


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[TokenIssuer]:
    with TokenIssuer(tmp_path, USERS) as running:
        yield running


def test_127_0_0_2_is_loopback() -> None:
    with (
        socket.create_server(("127.0.0.2", 0)) as server,
        socket.create_connection(server.getsockname(), timeout=1) as client,
    ):
        peer, _ = server.accept()
        with peer:
            client.sendall(b"x")
            assert peer.recv(1) == b"x"


def test_plain_registry(tmp_path: Path) -> None:
    with running_registry(tmp_path) as address:
        round_trip(f"http://{address}")


def test_htpasswd_registry(tmp_path: Path) -> None:
    with running_registry(tmp_path, htpasswd=USERS) as address:
        base = f"http://{address}"
        round_trip(base, RegistryAuth("alice", "wonderland"))
        for auth in (None, httpx.BasicAuth("alice", "wrong"), httpx.BasicAuth("bob", "x")):
            response = httpx.get(f"{base}/v2/", auth=auth)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == 'Basic realm="modelkitfs-test"'
        write_htpasswd(tmp_path / "htpasswd", {"bob": "builder"})
        assert httpx.get(f"{base}/v2/", auth=("bob", "builder")).status_code == 200
        assert httpx.get(f"{base}/v2/", auth=("alice", "wonderland")).status_code == 401


def test_token_registry(tmp_path: Path, issuer: TokenIssuer) -> None:
    with running_registry(tmp_path, token=issuer) as address:
        base = f"http://{address}"
        challenge = httpx.get(f"{base}/v2/{REPO}/tags/list")
        assert challenge.status_code == 401
        assert challenge.headers["WWW-Authenticate"] == (
            f'Bearer realm="{issuer.realm}",service="{issuer.service}",'
            f'scope="repository:{REPO}:pull"'
        )
        digest = round_trip(base, RegistryAuth("alice", "wonderland"))
        assert issuer.requests == issuer.authorizations.count("Basic " + "YWxpY2U6d29uZGVybGFuZA==")
        assert issuer.subjects and set(issuer.subjects) == {"alice"}
        # The registry lists the actions in no fixed order.
        asked = [scope.rpartition(":") for scopes in issuer.scopes for scope in scopes]
        assert (f"repository:{REPO}", ":", {"pull", "push"}) in [
            (kind, sep, set(actions.split(","))) for kind, sep, actions in asked
        ]

        params = {"service": issuer.service, "scope": f"repository:{REPO}:pull"}
        for auth in (None, ("alice", "wrong"), ("mallory", "wonderland")):
            assert httpx.get(issuer.realm, params=params, auth=auth).status_code == 401
        assert issuer.authorizations[-3] is None

        minted = issuer.make_token("alice", issuer.grant("alice", [f"repository:{REPO}:pull"]))
        header, claims, signature = minted.split(".")
        tampered = f"{header}.{claims}.{signature[:-4]}AAAA"
        for token, status in ((minted, 200), (tampered, 401)):
            response = httpx.get(
                f"{base}/v2/{REPO}/blobs/{digest}", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == status


def test_token_grants_and_refresh(tmp_path: Path, issuer: TokenIssuer) -> None:
    issuer.anonymous_pull = True
    with running_registry(tmp_path, token=issuer) as address:
        base = f"http://{address}"
        with httpx.Client(base_url=base, auth=RegistryAuth("alice", "wonderland")) as client:
            digest = push_blob(client)
        with httpx.Client(base_url=base, auth=RegistryAuth()) as anonymous:
            assert pull_blob(anonymous, digest).content == DATA
            assert anonymous.post(f"/v2/{REPO}/blobs/uploads/").status_code == 401
        assert issuer.subjects[-2:] == ["", ""]

        scope = f"repository:{REPO}:pull"
        got = httpx.get(
            issuer.realm,
            params={"service": issuer.service, "scope": scope, "offline_token": "true"},
            auth=("alice", "wonderland"),
        ).json()
        assert got["token"] == got["access_token"]
        assert got["expires_in"] == 60
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", got["issued_at"])
        form = {"grant_type": "password", "service": issuer.service, "scope": scope}
        password = {**form, "username": "alice", "password": "wonderland"}
        assert "refresh_token" not in httpx.post(issuer.realm, data=password).json()
        offline = httpx.post(issuer.realm, data={**password, "access_type": "offline"}).json()
        assert httpx.post(issuer.realm, data={**password, "password": "no"}).status_code == 401
        for refresh in (got["refresh_token"], offline["refresh_token"]):
            refreshed = httpx.post(
                issuer.realm,
                data={**form, "grant_type": "refresh_token", "refresh_token": refresh},
            )
            assert refreshed.status_code == 200
            bearer = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
            assert httpx.get(f"{base}/v2/{REPO}/blobs/{digest}", headers=bearer).content == DATA
        issuer.refresh_tokens.clear()
        stale = {**form, "grant_type": "refresh_token", "refresh_token": got["refresh_token"]}
        assert httpx.post(issuer.realm, data=stale).status_code == 401


def test_token_expiry(tmp_path: Path, issuer: TokenIssuer) -> None:
    issuer.lifetime = 1
    with running_registry(tmp_path, token=issuer) as address:
        params = {"service": issuer.service, "scope": "registry:catalog:*"}
        got = httpx.get(issuer.realm, params=params, auth=("alice", "wonderland")).json()
        assert got["expires_in"] == 1
        bearer = {"Authorization": f"Bearer {got['token']}"}
        url = f"http://{address}/v2/_catalog"
        assert httpx.get(url, headers=bearer).status_code == 200
        wait_for(lambda: httpx.get(url, headers=bearer).status_code == 401, "the token is refused")


def test_tls_registry(tmp_path: Path) -> None:
    ca = CA.create(tmp_path / "pki")
    other = CA.create(tmp_path / "other")
    tls = ca.issue("registry")
    with running_registry(tmp_path, tls=tls, htpasswd=USERS) as address:
        auth = RegistryAuth("alice", "wonderland")
        round_trip(f"https://{address}", auth, tls_context(ca.cert_path))
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://{address}/v2/", verify=tls_context(other.cert_path))


def test_tls_client_certificate(tmp_path: Path) -> None:
    ca = CA.create(tmp_path / "pki")
    other = CA.create(tmp_path / "other")
    tls, client = ca.issue("registry"), ca.issue("client", client=True)
    with running_registry(tmp_path, tls=tls, client_ca=ca.cert_path) as address:
        round_trip(f"https://{address}", verify=tls_context(ca.cert_path, client))
        for certificate in (None, other.issue("stranger", client=True)):
            with pytest.raises(httpx.TransportError):
                httpx.get(f"https://{address}/v2/", verify=tls_context(ca.cert_path, certificate))


def test_link_proxy(tmp_path: Path) -> None:
    """The bench's object-storage link: the registry's answers as they are, each after the
    link's wait, at no more than the per-connection rate after a burst of a tenth of it."""
    data, latency, rate = DATA * 100, 0.05, 4e6
    with running_registry(tmp_path) as address, LinkProxy(address, latency, rate) as link:
        with httpx.Client(base_url=f"http://{address}") as client:
            digest = push_blob(client, data)
        with httpx.Client(base_url=f"http://{link.address}", timeout=10) as client:
            started = time.monotonic()
            ranged = client.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=100-199"})
            assert time.monotonic() - started >= latency
            assert (ranged.status_code, ranged.content) == (206, data[100:200])
            assert ranged.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
            started = time.monotonic()
            assert pull_blob(client, digest).content == data
            assert time.monotonic() - started >= latency + (len(data) - rate / 10) / rate
            head = client.head(f"/v2/{REPO}/blobs/{digest}")
            assert (head.headers["Content-Length"], head.content) == (str(len(data)), b"")
            missing = client.get(f"/v2/{REPO}/blobs/sha256:{'0' * 64}")
            assert missing.status_code == 404 and b"BLOB_UNKNOWN" in missing.content


def test_redirecting_proxy(tmp_path: Path) -> None:
    with (
        running_registry(tmp_path, htpasswd=USERS) as address,
        RedirectingProxy(address) as proxy,
        httpx.Client(base_url=f"http://{proxy.address}", auth=("alice", "wonderland")) as client,
    ):
        digest = push_blob(client)
        redirect = client.get(f"/v2/{REPO}/blobs/{digest}")
        assert redirect.status_code == 307
        location = httpx.URL(redirect.headers["Location"])
        assert (location.host, location.path) == ("127.0.0.2", f"/blobs/{digest}")
        assert location.params["repo"] == REPO and location.params["sig"]
        assert client.head(f"/v2/{REPO}/blobs/{digest}").headers["Content-Length"] == "10240"
        assert httpx.get(f"http://{proxy.address}/v2/{REPO}/blobs/{digest}").status_code == 401

        assert httpx.get(location).content == DATA
        ranged = httpx.get(location, headers={"Range": "bytes=100-199"})
        assert ranged.status_code == 206
        assert ranged.headers["Content-Range"] == "bytes 100-199/10240"
        assert ranged.content == DATA[100:200]
        assert pull_blob(client, digest).content == DATA
        assert proxy.authorizations_seen == []
        assert (proxy.redirects, proxy.blob_requests) == (2, 3)
        assert proxy.ranges_seen == [None, "bytes=100-199", None]

        proxy.expire_urls()
        assert httpx.get(location).status_code == 403
        assert pull_blob(client, digest).content == DATA

        proxy.status, proxy.honour_range, proxy.reject_authorization = 302, False, True
        redirect = client.get(f"/v2/{REPO}/blobs/{digest}")
        assert redirect.status_code == 302
        whole = httpx.get(redirect.headers["Location"], headers={"Range": "bytes=0-9"})
        assert (whole.status_code, whole.content) == (200, DATA)
        leaked = httpx.get(redirect.headers["Location"], auth=("alice", "wonderland"))
        assert leaked.status_code == 400
        assert proxy.authorizations_seen == ["Basic YWxpY2U6d29uZGVybGFuZA=="]


def test_redirecting_proxy_before_token_auth(tmp_path: Path, issuer: TokenIssuer) -> None:
    with (
        running_registry(tmp_path, token=issuer) as address,
        RedirectingProxy(address) as proxy,
    ):
        auth = RegistryAuth("alice", "wonderland")
        with httpx.Client(base_url=f"http://{proxy.address}", auth=auth) as client:
            digest = push_blob(client)
            assert pull_blob(client, digest).content == DATA
        assert proxy.redirects == 1 and proxy.authorizations_seen == []
