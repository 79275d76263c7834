"""An agent whose command the host cannot run is refused at once with the reason (409: the
request was well formed, the host lacks the program), and nothing of it is left behind."""

from __future__ import annotations

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
