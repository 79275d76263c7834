"""An agent whose command the host cannot run is refused at once with the reason (409: the
request was well formed, the host lacks the program), and nothing of it is left behind."""

from __future__ import annotations

from typing import Any

import pytest

from corral.bus import jwt
from corral.bus.accounts import AgentCredentials
from corral.domain.errors import Unavailable
from tests.e2e.conftest import Live


async def test_a_command_that_cannot_be_run_is_409_and_leaves_nothing(live: Live) -> None:
    await live.org("acme")
    before = (await live.admin.get("/v1/orgs/acme/usage")).json()["quota"]
    r = await live.admin.post(
        "/v1/orgs/acme/agents",
        json={"name": "broken", "command": ["no-such-program-here", "--x"], "wait": True},
    )
    assert r.status_code == 409, r.text
    message = r.json()["error"]["message"]
    assert "no-such-program-here" in message and "cannot be run" in message
    assert (await live.admin.get("/v1/orgs/acme/agents")).json()["agents"] == []
    assert (await live.admin.get("/v1/orgs/acme/usage")).json()["quota"] == before


def _record_mints(bus: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The public key of every bus credential minted from now on, in order."""
    minted: list[str] = []
    mint = bus.mint_agent_creds

    def recording(org: str, agent: str, *, ttl_seconds: int) -> AgentCredentials:
        creds: AgentCredentials = mint(org, agent, ttl_seconds=ttl_seconds)
        minted.append(creds.public_key)
        return creds

    monkeypatch.setattr(bus, "mint_agent_creds", recording)
    return minted


async def test_a_start_that_fails_revokes_the_bus_key_recorded_with_the_agent(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provision mints the agent's bus key before it records the agent (with the key): a
    start that fails after that revokes the key, so nothing minted for it stays usable."""
    await live.org("acme")
    bus = live.platform.bus
    minted = _record_mints(bus, monkeypatch)
    r = await live.admin.post(
        "/v1/orgs/acme/agents",
        json={"name": "broken", "command": ["no-such-program-here"], "wait": True},
    )
    assert r.status_code == 409, r.text
    assert len(minted) == 1
    account = jwt.decode(bus.authority.org_account_jwt("acme"))
    assert minted[0] in account["nats"]["revocations"]
    assert (await live.admin.get("/v1/orgs/acme/agents")).json()["agents"] == []


async def test_a_resume_records_its_new_key_with_its_state_and_revokes_it_if_the_start_fails(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume mints the agent's new bus key and records it in the write that makes it
    ``resuming``; a start that fails after that revokes it, and the agent is paused again."""
    await live.org("acme")
    r = await live.admin.post("/v1/orgs/acme/agents", json={"name": "w", "wait": True})
    assert r.status_code == 201, r.text
    agent_id = r.json()["id"]
    first = (await live.platform.agents.get(agent_id)).public_key
    r = await live.admin.post(f"/v1/orgs/acme/agents/{agent_id}/pause")
    assert r.status_code == 200, r.text
    bus = live.platform.bus
    minted = _record_mints(bus, monkeypatch)
    r = await live.admin.post(f"/v1/orgs/acme/agents/{agent_id}/resume")
    assert r.status_code == 200, r.text
    stored = await live.platform.agents.get(agent_id)
    assert len(minted) == 1 and stored.public_key == minted[0] != first
    account = jwt.decode(bus.authority.org_account_jwt("acme"))
    assert first in account["nats"]["revocations"]  # the pause revoked the old one

    r = await live.admin.post(f"/v1/orgs/acme/agents/{agent_id}/pause")
    assert r.status_code == 200, r.text
    runtime = live.platform.runtime

    async def failing(spec: object) -> None:
        raise Unavailable("the host refused to start it")

    monkeypatch.setattr(runtime, "start", failing)
    r = await live.admin.post(f"/v1/orgs/acme/agents/{agent_id}/resume")
    assert r.status_code == 503, r.text
    assert len(minted) == 2
    account = jwt.decode(bus.authority.org_account_jwt("acme"))
    assert minted[1] in account["nats"]["revocations"]
    assert (await live.platform.agents.get(agent_id)).state.value == "paused"
