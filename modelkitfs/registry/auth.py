"""Registry authentication: HTTP Basic and the Distribution bearer-token flow.

A registry answers 401 with ``WWW-Authenticate``: ``Basic realm=...`` wants the credentials on
every request; ``Bearer realm=...,service=...,scope=...`` wants a token from the realm, asked for
with the credentials (or anonymously when there are none, or with an identity token as an OAuth2
refresh token). Tokens are cached per scope until shortly before they expire, then renewed
before the next request, from the challenge that asked for them; a 401 in the middle of a mount
(a token revoked or expired early) drops the token and asks for a new one. Many readers needing
a token at once cost one token request (a single flight per scope), and a token service that
blips (refused, 5xx, a name that does not resolve for now) is a
:class:`~modelkitfs.errors.TokenServiceError`, retried like any transient failure.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import trio

from modelkitfs.errors import AuthenticationError, RegistryError, TokenServiceError
from modelkitfs.primitives.singleflight import SingleFlight
from modelkitfs.registry.credentials import Credential
from modelkitfs.registry.network import MAX_ERROR_BODY

_PARAM = re.compile(r'(\w+)="([^"]*)"')
DEFAULT_TOKEN_LIFETIME = 60.0
CLIENT_ID = "modelkitfs"


@dataclass
class _Token:
    value: str
    expires: float


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split ``Bearer realm="...",service="..."`` into its scheme and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


def login_hint(host: str) -> str:
    return f"log in with 'kit login {host}', or set MODELKITFS_USERNAME and MODELKITFS_PASSWORD"


class Authenticator:
    """The auth state for one registry host: its scheme once known, and tokens by scope."""

    def __init__(self, host: str, lookup: Callable[[str], Credential | None]) -> None:
        self.host = host
        self._lookup = lookup
        self._credential: Credential | None = None
        self._looked_up = False
        self._basic = False
        self._tokens: dict[str, _Token] = {}
        self._challenges: dict[str, dict[str, str]] = {}  # by scope: what a token needs
        self._fetching: SingleFlight[str, _Token] = SingleFlight()

    @property
    def credential(self) -> Credential | None:
        if not self._looked_up:
            self._credential = self._lookup(self.host)
            self._looked_up = True
        return self._credential

    async def header(self, client: httpx.AsyncClient, scope: str) -> dict[str, str]:
        """The Authorization header for a request in ``scope``; a token that expired is
        renewed first (once, however many ask)."""
        if self._basic and self.credential is not None:
            return {"Authorization": _basic(self.credential)}
        token = self._tokens.get(scope)
        if token is not None and token.expires <= trio.current_time() and scope in self._challenges:
            token = self._tokens[scope] = await self._fetching.run(
                scope, self._fetch_token, client, self._challenges[scope], scope
            )
        if token is not None and token.expires > trio.current_time():
            return {"Authorization": f"Bearer {token.value}"}
        return {}

    def refused(self, what: str) -> AuthenticationError:
        """The error for a 401 that fresh authentication did not cure."""
        if self.credential is None:
            return AuthenticationError(
                f"registry {self.host} requires login for {what}: {login_hint(self.host)}"
            )
        return AuthenticationError(
            f"registry {self.host} refused the credentials of {self.credential.username!r} "
            f"(from {self.credential.source}) for {what}: check them, or log in again with "
            f"'kit login {self.host}'"
        )

    async def authenticate(
        self, client: httpx.AsyncClient, challenge: str, scope: str, sent: str | None = None
    ) -> None:
        """Answer a 401 ``challenge`` so that the next request for ``scope`` carries auth.
        ``sent``: the Authorization header the refused request carried; when another reader
        has renewed the token since, nothing more is asked."""
        token = self._tokens.get(scope)
        if (
            token is not None
            and sent != f"Bearer {token.value}"
            and token.expires > trio.current_time()
        ):
            return
        self._tokens.pop(scope, None)
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self.credential is None:
                raise AuthenticationError(
                    f"registry {self.host} requires login: {login_hint(self.host)}"
                )
            self._basic = True
            return
        if scheme != "bearer" or "realm" not in params:
            raise AuthenticationError(
                f"registry {self.host} asks for {scheme or 'unknown'} authentication, which "
                "modelkitfs does not speak (Basic and Bearer tokens only)"
            )
        self._challenges[scope] = params
        self._tokens[scope] = await self._fetching.run(
            scope, self._fetch_token, client, params, scope
        )

    async def _fetch_token(
        self, client: httpx.AsyncClient, params: dict[str, str], scope: str
    ) -> _Token:
        realm = params["realm"]
        credential = self.credential
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        if credential is not None and credential.identity_token:
            form = {
                **query,
                "grant_type": "refresh_token",
                "refresh_token": credential.secret,
                "client_id": CLIENT_ID,
            }
            request = client.build_request("POST", realm, data=form)
        elif credential is not None:
            request = client.build_request("GET", realm, params=query)
            request.headers["Authorization"] = _basic(credential)
        else:
            request = client.build_request("GET", realm, params=query)
        try:
            response = await client.send(request, stream=True)
            try:
                body = await _read_bounded(response)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise TokenServiceError(
                f"cannot reach the token service {_without_query(realm)} of registry "
                f"{self.host}: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code in (401, 403):
            if credential is None:
                raise AuthenticationError(
                    f"registry {self.host} refused anonymous access to {query['scope']}: the "
                    f"repository may be private or may not exist; {login_hint(self.host)}"
                )
            raise self.refused(query["scope"])
        if response.status_code != 200:
            raise TokenServiceError(
                f"the token service of registry {self.host} answered HTTP {response.status_code}"
            )
        try:
            document = json.loads(body)
            value = document.get("token") or document["access_token"]
            lifetime = float(document.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
            if not isinstance(value, str) or not value:
                raise TypeError("no token")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RegistryError(f"the token service of {self.host} sent no usable token") from exc
        # Renew a little early so a request never carries a token that expires in flight.
        margin = min(10.0, lifetime / 4)
        return _Token(value, trio.current_time() + max(lifetime - margin, 1.0))


async def _read_bounded(response: httpx.Response) -> bytes:
    """A token body: far under ``MAX_ERROR_BODY``; more is no token service's answer."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ERROR_BODY:
            raise httpx.DecodingError(f"a body of more than {MAX_ERROR_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def _basic(credential: Credential) -> str:
    pair = f"{credential.username}:{credential.secret}".encode()
    return "Basic " + base64.b64encode(pair).decode()
