"""As root with the sandbox on, each organization's agents run as a uid of its own. An org is
given it before its first agent starts, not when it is created (an org with no agent costs no
store write for it), and an org deleted and created again under the same name never runs as
the uid the first one had if another org holds it now."""

from __future__ import annotations

import os

import pytest

from tests.e2e.conftest import Live, the_agent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="an org's own uid is given as root")


async def _uid_of(live: Live, slug: str) -> int | None:
    org = await live.platform.orgs.get(slug)
    uids: dict[str, int] = await live.platform.orgs.sandbox_uids()
    return uids.get(org.id)


async def _agent_uid(live: Live, slug: str, name: str) -> int:
    agent = await live.agent(slug, name)
    assert agent["state"] == "running", agent
    return int(the_agent(agent["id"]).uids().real)


async def test_an_org_is_given_its_uid_with_its_first_agent(live: Live) -> None:
    if live.platform.sandbox is None or not live.platform.sandbox.enabled:
        pytest.skip("the sandbox is off on this host")
    await live.org("alpha")
    assert await _uid_of(live, "alpha") is None  # created: no uid yet

    first = await _agent_uid(live, "alpha", "one")
    assert first == await _uid_of(live, "alpha") and first != 0
    assert await _agent_uid(live, "alpha", "two") == first  # kept

    r = await live.admin.delete("/v1/orgs/alpha")
    assert r.status_code == 204, r.text
    await live.org("gamma")  # given the uid alpha had: it is the only one now
    gamma = await _agent_uid(live, "gamma", "one")
    await live.org("alpha")  # the same name again, another org
    again = await _agent_uid(live, "alpha", "one")
    assert again == await _uid_of(live, "alpha")
    assert again != gamma
