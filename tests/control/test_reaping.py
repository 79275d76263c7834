"""The reaper's judgement of silent agents: by the time they could have been heard, no more."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

import pytest

from corral.control.background import Background
from corral.control.bus_health import BusHealth
from corral.control.dispatch.reaping import Reaper
from corral.domain.admission import AdmittedResources
from corral.domain.agents import Agent, AgentState
from corral.domain.ids import AgentId, OrgId, OrgSlug
from corral.domain.plans import STANDARD
from corral.domain.quantities import parse
from corral.domain.tenancy import Organization

ORG = Organization(OrgId("org_acme"), OrgSlug("acme"), STANDARD, datetime.now(UTC))


def _agent(name: str, last_seen: datetime) -> Agent:
    res = AdmittedResources(parse("1"), parse("1"), parse("1Gi"), parse("1Gi"))
    return Agent(
        AgentId(f"agent-{name}"), ORG.id, ORG.slug, name, "worker", AgentState.RUNNING, res, (),
        None, 0, None, last_seen, last_seen, last_seen_at=last_seen,
    )  # fmt: skip


class StandInAgents:
    def __init__(self, agents: list[Agent]) -> None:
        self.agents = agents

    async def find(self, states: Collection[AgentState] | None = None) -> list[Agent]:
        return [a for a in self.agents if states is None or a.state in states]


class StandInController:
    def __init__(self, agents: list[Agent]) -> None:
        self.agents = StandInAgents(agents)
        self.bus_health = BusHealth()  # no probe: the bus answers
        self.silence_limit = 10.0
        self.restarted: list[str] = []

    async def heartbeat_lost(self, org: Organization, agent: Agent) -> None:
        self.restarted.append(agent.id)


def _reaper(controller: StandInController) -> Reaper:
    return Reaper(
        controller=controller,  # type: ignore[arg-type]
        orgs={ORG.id: ORG},
        inflight={},
        last_active={},
        leaving=set(),
        background=Background(),
        on_capacity=lambda org_id: None,
        idle_timeout=lambda org: 3600.0,
        heartbeat_seconds=1.0,
    )


@pytest.mark.parametrize("listening_for", [0, 11])
async def test_an_agent_is_judged_by_its_silence_since_the_dispatcher_listened(
    listening_for: int,
) -> None:
    """After a restart, the time no control plane ran is no agent's silence: an agent last
    heard 12 s ago (of a 10 s limit) is not restarted when the new dispatcher first looks,
    but is once the dispatcher has listened past the limit without hearing it."""
    now = datetime.now(UTC)
    agent = _agent("a", now - timedelta(seconds=12))
    controller = StandInController([agent])
    reaper = _reaper(controller)
    reaper.listening(now - timedelta(seconds=listening_for))
    await reaper.reap()
    for _ in range(3):
        await asyncio.sleep(0)  # what the reaper spawned runs
    assert controller.restarted == ([agent.id] if listening_for > 10 else [])
