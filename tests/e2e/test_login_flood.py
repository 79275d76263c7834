"""The console's login flooded from many client addresses, against a whole running platform
over real sockets (each attacker address its own loopback source address): guesses at one key
run dry on that key whatever address they come from, through the login form, the console's
cookie and the API alike; other keys still log in; and ``X-Forwarded-For`` spreads nothing
unless it comes from a proxy the operator named."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.api.console.session import COOKIE
from corral.api.guard import LoginLimiter
from corral.api.server import RunningServer, running
from tests.e2e.conftest import live_settings

#: the proxy this platform believes (a loopback address of its own)
PROXY = "127.0.0.60"
#: failures a key takes; none come back during a test (one a day)
KEY_BURST = 12


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = live_settings(
        tmp_path / "data",
        trusted_proxies=(PROXY,),
        key_failures_burst=KEY_BURST,
        key_failures_per_second=1 / 86_400,
    )
    async with running(settings) as srv:
        yield srv


def _from(server: RunningServer, address: str) -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (any of 127.0.0.0/8 on Linux)."""
    return httpx.AsyncClient(
        base_url=server.url,
        transport=httpx.AsyncHTTPTransport(local_address=address),
        timeout=30,
        follow_redirects=False,
    )


async def _org_key(server: RunningServer) -> str:
    async with httpx.AsyncClient(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.platform.new_admin_key}"},
        timeout=30,
    ) as admin:
        r = await admin.post("/v1/orgs", json={"name": "victim", "plan": "standard"})
        assert r.status_code == 201, r.text
        return str(r.json()["apiKey"])


async def test_a_flood_of_guesses_spread_over_many_addresses_runs_dry_on_the_key(
    server: RunningServer,
) -> None:
    key = await _org_key(server)
    prefix, key_id, secret = key.split("_", 2)
    codes: list[int] = []
    for i in range(KEY_BURST + 10):  # one guess per address: no address is held by its own
        guess = f"{prefix}_{key_id}_{i:0{len(secret)}d}"
        async with _from(server, f"127.0.1.{i + 1}") as attacker:
            if i % 2:
                r = await attacker.post("/login", data={"key": guess})
            else:  # a guessed key in the console's cookie is a login attempt too
                attacker.cookies.set(COOKIE, guess)
                r = await attacker.get("/orgs/victim")
        if r.status_code == 303:
            assert r.headers["location"] == "/login"  # the cookie's key was refused
            codes.append(401)
        else:
            codes.append(r.status_code)
    assert codes == [401] * KEY_BURST + [429] * 10, codes

    async with _from(server, "127.0.1.200") as fresh:  # a new address: the key is held
        r = await fresh.get("/v1/orgs", headers={"Authorization": f"Bearer {guess}"})
        assert r.status_code == 429 and "for the key" in r.json()["error"]["message"], r.text
        assert "Retry-After" in r.headers
        # its owner too, while the flood lasts: the lockout's price (the flood gained nothing)
        assert (await fresh.post("/login", data={"key": key})).status_code == 429
        # another key is not held by it
        r = await fresh.post("/login", data={"key": server.platform.new_admin_key})
        assert r.status_code == 303 and r.headers["location"] == "/", r.text


async def test_x_forwarded_for_spreads_nothing_unless_it_comes_from_a_trusted_proxy(
    server: RunningServer,
) -> None:
    burst = LoginLimiter().addresses.burst

    async def attempts(address: str, *, at_most: int) -> list[int]:
        """Logins that name no key (only the address's budget is spent), each claiming to
        be forwarded for another client, until one is refused."""
        codes: list[int] = []
        async with _from(server, address) as client:
            while len(codes) < at_most and 429 not in codes:
                forwarded = f"10.9.{len(codes) // 250}.{len(codes) % 250}"
                r = await client.post(
                    "/login", data={"key": "not-a-key"}, headers={"X-Forwarded-For": forwarded}
                )
                codes.append(r.status_code)
        return codes

    # an untrusted client (the local host too) writing a new X-Forwarded-For each time is
    # still one address: refused once its burst is spent (and what refilled meanwhile)
    spread = await attempts("127.0.0.1", at_most=1000)
    assert spread[:burst] == [401] * burst and spread[-1] == 429, spread
    # through the proxy the operator named, each forwarded client has a budget of its own
    proxied = await attempts(PROXY, at_most=3 * burst)
    assert proxied == [401] * (3 * burst), proxied
