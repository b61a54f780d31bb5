"""Start a real CNCF Distribution registry on a free loopback port with its own storage.

What Distribution 2.8.2 accepts, found by running it:

- ``htpasswd`` works over plain HTTP too (TLS is only advised), and only bcrypt entries count.
  It checks the bcrypt hash on every request, so the file here uses the cheapest cost; it re-reads
  the file when its mtime changes, so ``write_htpasswd`` may change users while it runs.
- ``token`` needs realm, service, issuer and rootcertbundle; it accepts a token until 60 s after
  its ``exp`` (see ``TokenIssuer.registry_leeway``).
- Only one auth scheme at a time.
- ``clientcas`` makes every connection present a certificate from those CAs (Go's
  RequireAndVerifyClientCert): without one the TLS handshake fails, there is no HTTP 401.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.support.token_issuer import TokenIssuer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_htpasswd(path: Path, users: dict[str, str]) -> None:
    """Write a bcrypt htpasswd file (cost 4: Distribution verifies it on every request)."""
    import bcrypt

    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
        for user, password in users.items()
    ]
    path.write_text("".join(lines))


def _auth_config(
    root: Path, htpasswd: dict[str, str] | None, token: TokenIssuer | None
) -> dict[str, Any]:
    if htpasswd is not None and token is not None:
        raise ValueError("Distribution takes one auth scheme: htpasswd or token")
    if htpasswd is not None:
        write_htpasswd(root / "htpasswd", htpasswd)
        return {"htpasswd": {"realm": "modelkitfs-test", "path": str(root / "htpasswd")}}
    if token is not None:
        return {
            "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": str(token.root_cert_path),
            }
        }
    return {}


def _ready(address: str, tls: bool, client_ca: bool) -> bool:
    """Whether the registry answers; any HTTP status, 401 included, means it is up."""
    if client_ca:
        # Without a client certificate only the handshake can succeed: TLS 1.3 finishes it on
        # our side before the server refuses the missing certificate.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        host, port = address.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=1) as raw:
                context.wrap_socket(raw).close()
        except OSError:
            return False
        return True
    scheme = "https" if tls else "http"
    try:
        httpx.get(f"{scheme}://{address}/v2/", timeout=1, verify=False)
    except httpx.HTTPError:
        return False
    return True


def storage_folder(root: Path) -> Path:
    """Where the registry started with ``root`` keeps its blobs and manifests."""
    return root / "data"


@contextlib.contextmanager
def running_registry(
    root: Path,
    *,
    htpasswd: dict[str, str] | None = None,
    token: TokenIssuer | None = None,
    tls: tuple[Path, Path] | None = None,
    client_ca: Path | None = None,
    redirect: str | None = None,
) -> Iterator[str]:
    """Run a registry storing under ``root``; yields its ``host:port`` (always 127.0.0.1).

    ``htpasswd`` (user → password) or ``token`` turn on authentication; ``tls`` is a
    (certificate, key) pair to serve HTTPS with, and ``client_ca`` a CA whose certificates
    clients must then present. ``redirect`` (a base URL) turns on the ``redirect`` storage
    middleware: blob GETs are answered with a redirect to ``redirect`` + the blob's path in
    the storage folder (``storage_folder(root)``), as registries on object storage answer.
    """
    if client_ca is not None and tls is None:
        raise ValueError("client_ca needs tls")
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        raise RuntimeError("docker-registry is not installed: run scripts/setup")
    address = f"127.0.0.1:{free_port()}"
    http: dict[str, Any] = {"addr": address}
    if tls is not None:
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        if client_ca is not None:
            http["tls"]["clientcas"] = [str(client_ca)]
    config = root / "config.yml"
    settings: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage_folder(root))},
            "delete": {"enabled": True},
        },
        "http": http,
    }
    if redirect is not None:
        settings["middleware"] = {
            "storage": [{"name": "redirect", "options": {"baseurl": redirect}}]
        }
    if auth := _auth_config(root, htpasswd, token):
        settings["auth"] = auth
    config.write_text(json.dumps(settings))
    with open(root / "registry.log", "wb") as log:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not _ready(address, tls is not None, client_ca is not None):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"registry did not start: {(root / 'registry.log').read_text()}")
            time.sleep(0.05)
        yield address
    finally:
        process.terminate()
        process.wait(10)


class RegistryAuth(httpx.Auth):
    """Answers a registry's Basic or Bearer challenge the way docker does."""

    requires_response_body = True

    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        self.basic = None if user is None else httpx.BasicAuth(user, password or "")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield request
        if response.status_code != 401:
            return
        scheme, _, params = response.headers["WWW-Authenticate"].partition(" ")
        if scheme == "Basic" and self.basic is not None:
            yield from self.basic.auth_flow(request)
        elif scheme == "Bearer":
            challenge = dict(re.findall(r'(\w+)="([^"]*)"', params))
            query = {k: v for k, v in challenge.items() if k in ("service", "scope")}
            token_request = httpx.Request("GET", challenge["realm"], params=query)
            if self.basic is not None:
                token_request = next(self.basic.auth_flow(token_request))
            token_response = yield token_request
            if token_response.status_code == 200:
                request.headers["Authorization"] = f"Bearer {token_response.json()['token']}"
                yield request


def tls_context(ca: Path, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(*client)
    return context
