"""The dispatcher's snapshot of agents takes the controller's news of an agent in place of
reading every agent again, and keeps each org's agents in their order."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, cast

from corral.control.dispatch.snapshot import AgentSnapshot
from corral.domain.admission import AdmittedResources, UsageSnapshot, empty_usage
from corral.domain.agents import Agent, AgentState
from corral.domain.ids import AgentId, OrgId, OrgSlug, TaskId
from corral.domain.plans import STANDARD
from corral.domain.quantities import parse
from corral.domain.roles import Role
from corral.domain.tenancy import Organization
from corral.scheduling.placement import Action
from corral.scheduling.scheduler import QueuedTask

S = AgentState
NOW = datetime.now(UTC)
RES = AdmittedResources(parse("500m"), parse("1"), parse("1Gi"), parse("2Gi"))


def _agent(org: str, name: str, state: AgentState = S.RUNNING) -> Agent:
    return Agent(
        AgentId(f"agent-{org}-{name}"), f"org_{org}", org, name, "r", state, RES, (), None, 0,
        None, NOW, NOW,
    )  # fmt: skip


class _Store:
    """What the store holds, and how often the snapshot read it."""

    def __init__(self, agents: list[Agent]) -> None:
        self.agents = agents
        self.reads = 0

    async def find(self, states: list[AgentState]) -> list[Agent]:
        self.reads += 1
        return [a for a in self.agents if a.state in states]


def _snapshot(store: _Store) -> AgentSnapshot:
    ledger: Any = None  # not asked here
    return AgentSnapshot(find_agents=store.find, ledger=ledger, inflight={})


async def test_a_change_is_put_into_the_snapshot_without_reading_every_agent() -> None:
    a1, a2, b1 = _agent("a", "1"), _agent("a", "2", S.PAUSED), _agent("b", "1")
    store = _Store([a1, a2, b1])
    snap = _snapshot(store)
    before = await snap.agents()
    assert store.reads == 1 and [a.id for a in before["org_a"]] == [a1.id, a2.id]

    woken = dataclasses.replace(a2, state=S.RUNNING)
    store.agents[1] = woken
    snap.agent_changed(woken)
    now = await snap.agents()
    assert store.reads == 1  # no second read
    assert now["org_a"] == [a1, woken]  # in its place
    assert before["org_a"] == [a1, a2]  # what a round was given is not changed under it

    new = _agent("c", "1", S.PROVISIONING)
    snap.agent_changed(new)
    snap.agent_ready(dataclasses.replace(new, state=S.RUNNING))
    gone = dataclasses.replace(b1, state=S.TERMINATED)
    snap.agent_changed(gone)
    now = await snap.agents()
    assert store.reads == 1
    assert [a.state for a in now["org_c"]] == [S.RUNNING]
    assert "org_b" not in now  # its only agent is gone


async def test_a_change_during_a_read_makes_the_read_start_over() -> None:
    a1 = _agent("a", "1", S.PAUSED)
    store = _Store([a1])
    snap = _snapshot(store)
    running = dataclasses.replace(a1, state=S.RUNNING)

    async def find_then_change(states: list[AgentState]) -> list[Agent]:
        got = await _Store.find(store, states)
        if store.reads == 1:  # the news arrives while the first read is under way
            store.agents = [running]
            snap.agent_changed(running)
        return got

    snap._find = find_then_change
    assert (await snap.agents())["org_a"] == [running]
    assert store.reads == 2


class _Ledger:
    """Each org's use (agents only), and which orgs each read asked for."""

    def __init__(self, agents: dict[str, int]) -> None:
        self.agents = agents
        self.full_reads = 0
        self.asked: list[set[str]] = []

    def _use(self, org_id: str) -> UsageSnapshot:
        return UsageSnapshot(empty_usage(), self.agents[org_id], 0)

    async def all_usage(self) -> dict[str, UsageSnapshot]:
        self.full_reads += 1
        return {org_id: self._use(org_id) for org_id in self.agents}

    async def usage_of(self, org_ids: Collection[str]) -> dict[str, UsageSnapshot]:
        self.asked.append(set(org_ids))
        return {o: self._use(o) for o in org_ids if o in self.agents}


async def test_a_charge_has_only_its_orgs_use_read_again() -> None:
    ledger = _Ledger({f"org_{n}": 0 for n in range(200)})
    snap = AgentSnapshot(find_agents=_Store([]).find, ledger=cast(Any, ledger), inflight={})
    before = await snap.usage()
    assert ledger.full_reads == 1 and before["org_7"].agents == 0

    snap.agent_changed(_agent("7", "w"))  # an agent's change alone: its use is as it was
    assert await snap.usage() is before and not ledger.asked
    for n in (7, 8):  # two wakes, a charge each (the ledger tells the snapshot)
        ledger.agents[f"org_{n}"] = 1
        snap.forget_usage(f"org_{n}")
    del ledger.agents["org_9"]  # an org deleted meanwhile
    snap.forget_usage("org_9")
    now = await snap.usage()
    assert ledger.full_reads == 1  # not every org again
    assert ledger.asked == [{"org_7", "org_8", "org_9"}]
    assert now["org_7"].agents == 1 and now["org_8"].agents == 1 and "org_9" not in now
    assert now["org_1"] is before["org_1"]  # the others as they were read
    assert before["org_7"].agents == 0 and "org_9" in before  # what was handed out stays
    assert await snap.usage() is now and len(ledger.asked) == 1  # nothing changed since

    snap.forget_usage()  # anyone's: everything again
    await snap.usage()
    assert ledger.full_reads == 2


async def test_an_org_newer_than_the_use_read_waits_one_round_then_is_read() -> None:
    ledger = _Ledger({"org_old": 0})
    snap = AgentSnapshot(
        find_agents=_Store([]).find,
        ledger=cast(Any, ledger),
        inflight={},
        roles=lambda org_id: [Role("sleeper")],
        queued=lambda org_id, role: 1,  # the task below
    )
    usage = await snap.usage()  # read before the org existed
    ledger.agents["org_new"] = 0
    org = Organization(OrgId("org_new"), OrgSlug("new"), STANDARD, NOW)
    task = QueuedTask(TaskId("task_1"), OrgId("org_new"), role="sleeper")
    views = await snap.views()
    placed = snap.place(task, org, views, usage, auto_provision=True)
    assert placed.action is Action.WAIT and "being read" in placed.reason
    assert snap.unread() == {"org_new"} and snap.unread() == set()  # told once
    usage = await snap.usage()  # the next round: that org alone is read
    assert ledger.full_reads == 1 and ledger.asked == [{"org_new"}]
    placed = snap.place(task, org, await snap.views(), usage, auto_provision=True)
    assert placed.action is Action.PROVISION
