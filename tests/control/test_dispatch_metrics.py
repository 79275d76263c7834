"""Every dispatch is counted in ``corral_dispatch_latency_seconds``, however many come between
two scrapes: more than the 10,000 a window once kept (which read 10,000 of 60,039)."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest

from corral.domain.agents import AgentState
from corral.domain.ids import AgentId
from corral.domain.messages import StatusKind
from corral.domain.tasks import TaskState
from corral.observability.metrics import Metrics
from corral.store.db import Database
from tests.control.test_dispatcher_failures import StandInAgents, _submit, _world

N = 10_050  # more than the old window
AGENTS = 10  # of 1,024 slots each: room for every task at once


def _count(text: str) -> float:
    found = re.search(r'^corral_dispatch_latency_seconds_count\{tier="all"\} (\S+)$', text, re.M)
    assert found, text
    return float(found.group(1))


@pytest.mark.timeout(600)
async def test_every_dispatch_is_counted_when_metrics_are_scraped_once(db: Database) -> None:
    w = await _world(db)
    agents = w.dispatcher.controller.agents
    assert isinstance(agents, StandInAgents)
    agents.agents = [
        dataclasses.replace(w.agent, id=AgentId(f"agent-{i}"), slots=1024) for i in range(AGENTS)
    ]
    for agent in agents.agents:  # each says it is ready for 1,024 tasks at once
        w.dispatcher.agent_changed(agent)
        w.dispatcher.snapshot.announce(agent.id, StatusKind.READY, {"slots": 1024})
    metrics = Metrics()
    w.dispatcher.on_dispatched = metrics.dispatched
    assert _count(metrics.render().decode()) == 0.0
    for _ in range(N // 1000):
        await asyncio.gather(*(_submit(w) for _ in range(1000)))
    await asyncio.gather(*(_submit(w) for _ in range(N % 1000)))
    while len(w.bus.sent) < N:
        before = len(w.bus.sent)
        await w.dispatcher.round()
        assert len(w.bus.sent) > before, "a round dispatched nothing"
    assert len({t.task_id for _, _, t in w.bus.sent}) == N
    assert _count(metrics.render().decode()) == float(N)  # the one scrape, at the end
    stored = await w.tasks.find(states=[TaskState.DISPATCHED], limit=N + 1)
    assert len(stored) == N
    assert all(a.state is AgentState.RUNNING for a in agents.agents)
    await w.dispatcher.close()
