"""Bearer tokens against httpx's MockTransport under trio's MockClock: one token request per
scope however many readers need it, renewed before it expires, and a token service that blips
is a transient failure (retried by the policy), not a refused login."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

from modelkitfs.errors import AuthenticationError, TokenServiceError
from modelkitfs.registry.auth import Authenticator

CHALLENGE = 'Bearer realm="http://auth.test/token",service="reg",scope="repository:a:pull"'
SCOPE = "repository:a:pull"


class TokenService:
    def __init__(self, *statuses: int, lifetime: int = 60) -> None:
        self.statuses = list(statuses)
        self.lifetime = lifetime
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.statuses:
            return httpx.Response(self.statuses.pop(0))
        token = f"t{self.requests}"
        return httpx.Response(200, json={"token": token, "expires_in": self.lifetime})


def run(main) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_many_readers_after_expiry_cost_one_token_request() -> None:
    service = TokenService(lifetime=20)
    headers: list[dict[str, str]] = []

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(service)) as client:
            auth = Authenticator("reg.test", lambda host: None)
            await auth.authenticate(client, CHALLENGE, SCOPE)
            await trio.sleep(30)  # the token expired
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(lambda: _header(auth, client, headers))
            # A 401 answered with a token older than the current one asks for nothing more.
            await auth.authenticate(client, CHALLENGE, SCOPE, "Bearer t1")

    run(main)
    assert service.requests == 2
    assert headers == [{"Authorization": "Bearer t2"}] * 8


async def _header(auth: Authenticator, client: httpx.AsyncClient, out: list) -> None:
    out.append(await auth.header(client, SCOPE))


@pytest.mark.parametrize("status", [503, 500, 429])
def test_a_token_service_blip_is_transient(status: int) -> None:
    service = TokenService(status)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(service)) as client:
            auth = Authenticator("reg.test", lambda host: None)
            with pytest.raises(TokenServiceError):
                await auth.authenticate(client, CHALLENGE, SCOPE)
            await auth.authenticate(client, CHALLENGE, SCOPE)  # the next attempt gets one
            assert await auth.header(client, SCOPE) == {"Authorization": "Bearer t2"}

    run(main)


def test_an_unreachable_token_service_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
            with pytest.raises(TokenServiceError, match="cannot reach the token service"):
                await Authenticator("reg.test", lambda host: None).authenticate(
                    client, CHALLENGE, SCOPE
                )

    run(main)


def test_a_refused_anonymous_pull_is_final() -> None:
    async def main() -> None:
        transport = httpx.MockTransport(lambda request: httpx.Response(401))
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(AuthenticationError, match="kit login"):
                await Authenticator("reg.test", lambda host: None).authenticate(
                    client, CHALLENGE, SCOPE
                )

    run(main)


def test_a_token_body_is_bounded() -> None:
    async def main() -> None:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b" " * 10**6))
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(TokenServiceError, match="more than 65536 bytes"):
                await Authenticator("reg.test", lambda host: None).authenticate(
                    client, CHALLENGE, SCOPE
                )

    run(main)
