"""Registry authentication: the Distribution bearer-token flow.

A registry answers 401 with ``WWW-Authenticate: Bearer realm=..., service=..., scope=...``; we
ask the realm for a token (anonymously for now) and retry. Tokens are cached per scope until
shortly before they expire, so a long mount asks again only when it must.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import httpx

from modelkitfs.errors import AuthenticationError, RegistryError

_PARAM = re.compile(r'(\w+)="([^"]*)"')
DEFAULT_TOKEN_LIFETIME = 60.0


@dataclass
class _Token:
    value: str
    expires: float


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split ``Bearer realm="...",service="..."`` into its scheme and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


class TokenAuth:
    """Holds bearer tokens for one registry, keyed by scope."""

    def __init__(self, registry: str) -> None:
        self.registry = registry
        self._tokens: dict[str, _Token] = {}

    def header_for(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token and token.expires > time.monotonic():
            return {"Authorization": f"Bearer {token.value}"}
        return {}

    def forget(self, scope: str) -> None:
        self._tokens.pop(scope, None)

    async def authenticate(self, client: httpx.AsyncClient, challenge: str, scope: str) -> None:
        """Answer a 401 ``challenge`` by fetching a token for ``scope``."""
        scheme, params = parse_challenge(challenge)
        if scheme != "bearer" or "realm" not in params:
            raise AuthenticationError(
                f"registry {self.registry} requires login ({scheme or 'unknown'} auth); "
                "pull access without credentials was refused: check the reference, or log in "
                "with 'kit login'"
            )
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        try:
            response = await client.get(params["realm"], params=query)
        except httpx.HTTPError as exc:
            raise RegistryError(
                f"cannot reach token service {params['realm']} of {self.registry}: {exc}"
            ) from exc
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"registry {self.registry} refused anonymous access to {scope}: the repository "
                "may be private or may not exist; check the reference, or log in with 'kit login'"
            )
        if response.status_code != 200:
            raise RegistryError(
                f"token service of {self.registry} answered HTTP {response.status_code}"
            )
        try:
            body = response.json()
            value = body.get("token") or body["access_token"]
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"token service of {self.registry} sent no usable token") from exc
        # Renew a little early so a request never carries a token that expires in flight.
        self._tokens[scope] = _Token(value, time.monotonic() + max(lifetime - 10.0, 1.0))
