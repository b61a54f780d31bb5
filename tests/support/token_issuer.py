"""A Docker/Distribution token server, so tests can drive the bearer-token flow end to end.

It implements the parts of https://distribution.github.io/distribution/spec/auth/token/ and
.../auth/oauth/ a client meets: ``GET /token`` with HTTP Basic credentials (or none, for anonymous
pulls), ``POST /token`` with the password and refresh-token grants, and JWTs shaped as the
registry's verifier wants them (``.../auth/jwt/``): ES256, signed by a key whose self-signed
certificate travels in ``x5c`` and doubles as the registry's ``rootcertbundle``.

It runs in a thread of the test process: a test that blocks holding the GIL while the daemon
needs a token (safetensors faulting in pages of a mounted file) would deadlock against it.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.support.pki import CA
from tests.support.threaded_servers import LoopbackHTTPServer, ServedInThreads

# Distribution 2.8 accepts a token until 60 s after its exp (registry/auth/token/token.go).
REGISTRY_LEEWAY = 60


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``repository:team/model:pull,push`` → (type, name, actions); names may hold colons."""
    head, _, actions = scope.rpartition(":")
    kind, _, name = head.partition(":")
    if not kind or not name or not actions:
        return None
    return kind.split("(")[0], name, actions.split(",")


class TokenIssuer(ServedInThreads):
    """A token server on 127.0.0.1 with ``users`` (name → password); started on construction.

    Plain attributes may be changed while it runs: ``users``, ``lifetime``, ``anonymous_pull``,
    ``refresh_tokens`` (refresh token → user; clear it to revoke them all). It records every
    request: ``requests``, ``authorizations`` (the Authorization header, None when absent),
    ``scopes`` (the scopes asked for) and ``subjects`` (the user each token went to, "" for
    anonymous).

    The registry refuses a token ``lifetime`` to ``lifetime + 1`` seconds after issue: the
    ``exp`` claim is set ``registry_leeway`` seconds early to cancel the clock-skew allowance
    Distribution adds. Set ``registry_leeway = 0`` for an honest ``exp``.
    """

    service = "modelkitfs-test-registry"
    issuer = "modelkitfs-test-issuer"

    def __init__(
        self,
        directory: Path,
        users: dict[str, str],
        *,
        lifetime: int = 60,
        anonymous_pull: bool = False,
    ) -> None:
        self.users = dict(users)
        self.lifetime = lifetime
        self.anonymous_pull = anonymous_pull
        self.registry_leeway = REGISTRY_LEEWAY
        self.refresh_tokens: dict[str, str] = {}
        self.lock = threading.Lock()
        self.requests = 0
        self.authorizations: list[str | None] = []
        self.scopes: list[list[str]] = []
        self.subjects: list[str] = []
        self._ca = CA.create(directory / "token-issuer", "modelkitfs test token issuer")
        self.root_cert_path = self._ca.cert_path
        der = self._ca.certificate.public_bytes(serialization.Encoding.DER)
        self._header = b64url(
            json.dumps(
                {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
            ).encode()
        )
        server = _Server(("127.0.0.1", 0), _Handler)
        server.issuer = self
        self.realm = f"http://127.0.0.1:{server.server_address[1]}/token"
        self._serve(server)

    def reset(self) -> None:
        """Forget the recorded requests (not the refresh tokens)."""
        with self.lock:
            self.requests = 0
            self.authorizations.clear()
            self.scopes.clear()
            self.subjects.clear()

    def grant(self, user: str | None, scopes: Iterable[str]) -> list[dict[str, object]]:
        """The access claim for ``scopes``: users get what they ask, anonymous only pull."""
        merged: dict[tuple[str, str], list[str]] = {}
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            kind, name, actions = parsed
            if user is None:
                actions = [a for a in actions if a == "pull" and kind == "repository"]
            granted = merged.setdefault((kind, name), [])
            granted.extend(a for a in actions if a not in granted)
        return [
            {"type": kind, "name": name, "actions": actions}
            for (kind, name), actions in merged.items()
            if actions
        ]

    def make_token(self, subject: str, access: Sequence[dict[str, object]]) -> str:
        """A signed JWT for ``subject`` carrying ``access`` claims."""
        now = math.ceil(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.lifetime - self.registry_leeway,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": list(access),
        }
        signing_input = f"{self._header}.{b64url(json.dumps(claims).encode())}"
        der = self._ca.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def respond(self, user: str | None, scopes: list[str], *, offline: bool) -> dict[str, object]:
        """The JSON body of a successful token request."""
        token = self.make_token(user or "", self.grant(user, scopes))
        body: dict[str, object] = {
            "token": token,
            "access_token": token,
            "expires_in": self.lifetime,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with self.lock:
            self.subjects.append(user or "")
            if offline and user is not None:
                refresh = secrets.token_urlsafe(24)
                self.refresh_tokens[refresh] = user
                body["refresh_token"] = refresh
        return body

    def check_password(self, user: str | None, password: str | None) -> bool:
        return user is not None and password is not None and self.users.get(user) == password


class _Server(LoopbackHTTPServer):
    issuer: TokenIssuer

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hanging up are routine here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    @property
    def issuer(self) -> TokenIssuer:
        return self.server.issuer

    def _reply(self, status: int, body: dict[str, object], challenge: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if challenge:
            self.send_header("WWW-Authenticate", 'Basic realm="modelkitfs-test-issuer"')
        self.end_headers()
        self.wfile.write(data)

    def _record(self, scopes: list[str]) -> None:
        with self.issuer.lock:
            self.issuer.requests += 1
            self.issuer.authorizations.append(self.headers.get("Authorization"))
            self.issuer.scopes.append(scopes)

    def _bad_service(self, service: str | None) -> bool:
        if service in (None, self.issuer.service):
            return False
        self._reply(400, {"error": "invalid_request", "details": f"unknown service {service}"})
        return True

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        scopes = [s for value in query.get("scope", []) for s in value.split()]
        self._record(scopes)
        if url.path != "/token":
            self._reply(404, {"details": "not found"})
            return
        if self._bad_service(query.get("service", [None])[0]):
            return
        user = None
        authorization = self.headers.get("Authorization", "")
        if authorization:
            scheme, _, credentials = authorization.partition(" ")
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except ValueError:
                decoded = ""
            user, _, password = decoded.partition(":")
            if scheme.lower() != "basic" or not self.issuer.check_password(user, password):
                self._reply(401, {"details": "incorrect username or password"}, challenge=True)
                return
        elif not self.issuer.anonymous_pull:
            self._reply(401, {"details": "authentication required"}, challenge=True)
            return
        offline = query.get("offline_token", ["false"])[0] == "true"
        self._reply(200, self.issuer.respond(user, scopes, offline=offline))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        field = {key: values[0] for key, values in form.items()}
        scopes = field.get("scope", "").split()
        self._record(scopes)
        if urllib.parse.urlsplit(self.path).path != "/token":
            self._reply(404, {"details": "not found"})
            return
        if self._bad_service(field.get("service")):
            return
        grant_type = field.get("grant_type")
        if grant_type == "password":
            user = field.get("username")
            if not self.issuer.check_password(user, field.get("password")):
                self._reply(401, {"error": "invalid_grant", "details": "bad credentials"})
                return
            offline = field.get("access_type") == "offline"
        elif grant_type == "refresh_token":
            with self.issuer.lock:
                user = self.issuer.refresh_tokens.get(field.get("refresh_token", ""))
            if user is None:
                self._reply(401, {"error": "invalid_grant", "details": "unknown refresh token"})
                return
            offline = False
        else:
            self._reply(400, {"error": "unsupported_grant_type"})
            return
        body = self.issuer.respond(user, scopes, offline=offline)
        body["scope"] = " ".join(scopes)
        self._reply(200, body)
