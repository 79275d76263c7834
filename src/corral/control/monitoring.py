"""Cross-tenant monitoring: refresh the metrics snapshot from the store, the scheduler and the
runtime. Per-org figures for an org key are served by ``org_usage``.

``/metrics`` costs what is *active*, not how many orgs exist: per-org series (queue depth,
quota) are emitted only for an org with queued tasks, agents or quota in use — an idle org has
nothing to say — and ``corral_orgs`` counts the orgs by tier. ``every_org`` (``/metrics?orgs=all``)
emits the quota series of every org, for an operator who wants them (see docs/tenants.md).

What the runtime measures of the agents' processes (CPU, RSS) is kept for
:data:`MEASURED_FOR` seconds: reading the process table is the dearest part of a refresh, and
a client scraping several times a second (a dashboard, a script counting completed tasks)
would otherwise make the control plane spend its time there. Quota use and the running agents
come from the dispatcher's snapshot (every charge and release the ledger makes, and every
change an agent's lifecycle makes, put in at once; quota use may include a provision placement
decided and has not charged yet, until it charges or gives up) and the orgs from its book:
reading them again per scrape was half of its cost with 200 agents. Tasks by state are the
dispatcher's own counts (:mod:`corral.control.dispatch.counts`; counted in the store until
its one read of the finished tasks is done), agents by state are counted in the store, queue
depths come from the scheduler, at every refresh."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from corral.domain.admission import UsageSnapshot
from corral.domain.agents import AgentState
from corral.domain.ids import OrgId
from corral.domain.plans import QUOTA_RESOURCES
from corral.domain.tenancy import Organization
from corral.observability.metrics import AgentUsage, Snapshot, wanted

if TYPE_CHECKING:
    from corral.control.platform import Platform

__all__ = ["MEASURED_FOR", "Measured", "org_figures", "refresh_metrics"]

#: seconds an agent's measured usage is shown before it is measured again
MEASURED_FOR = 2.0


class Measured:
    """The agents' usage as last measured, and when (per platform)."""

    def __init__(self) -> None:
        self.at = float("-inf")
        self.usage: dict[str, Any] = {}  # agent id → what the runtime measured

    def fresh(self, agent_ids: set[str], now: float) -> bool:
        """Whether the last measurement is recent and covers every one of ``agent_ids``."""
        return now - self.at < MEASURED_FOR and agent_ids <= self.usage.keys()


#: the families read per org, and those read per running agent
_PER_ORG = frozenset({"orgs", "queue_depth", "oldest_wait", "quota_used", "quota_hard"})
_PER_AGENT = frozenset({"requests", "cpu", "rss"})


async def refresh_metrics(
    p: Platform, *, every_org: bool = False, names: Collection[str] | None = None
) -> Snapshot:
    """Measure the snapshot's families (with ``names``, only those whose series it names: a
    script that polls one series does not pay for the rest) and return it; a whole one is
    also kept as the platform's last."""
    keys = wanted(names)
    snap = Snapshot()
    if "agents" in keys:
        snap.agents = await p.agents.count_by_state()
    if "tasks" in keys:
        counts = p.dispatcher.book.counts
        # kept by the dispatcher since it took over; a replica that does not lead counts them
        snap.tasks = (
            counts.rows(p.dispatcher.book.orgs) if counts.loaded else await p.tasks.count_by_state()
        )
    snap.quarantined = p.tasks.quarantined
    snap.pruned = p.retention.pruned
    orgs = list(p.dispatcher.book.orgs.values())  # every org, as the dispatcher holds it
    by_id: dict[str, Organization] = {o.id: o for o in orgs}
    snapshot = p.dispatcher.snapshot  # the dispatcher's own, at most a second or two old
    if keys & _PER_ORG:
        _per_org(p, snap, orgs, await snapshot.usage(), every_org=every_org)
    if keys & _PER_AGENT:
        await _per_agent(p, snap, by_id)
    if names is None:
        p.metrics.snapshot = snap
    return snap


def _per_org(
    p: Platform,
    snap: Snapshot,
    orgs: list[Organization],
    usage: Mapping[str, UsageSnapshot],
    *,
    every_org: bool,
) -> None:
    now = time.time()
    tiers: dict[str, int] = {}
    for org in orgs:
        tier = org.plan.name
        tiers[tier] = tiers.get(tier, 0) + 1
        depth = p.dispatcher.scheduler.queued(OrgId(org.id))
        u = usage.get(org.id)
        in_use = u is not None and (u.agents > 0 or any(q.value for q in u.used.values()))
        if not (every_org or depth or in_use):
            continue  # an idle org: no series of its own
        snap.queue_depth.append((org.slug, tier, depth))
        oldest = p.dispatcher.scheduler.oldest(OrgId(org.id)) if depth else None
        if oldest is not None:
            snap.oldest_wait.append((org.slug, tier, now - oldest))
        if u is None:
            continue
        for r in QUOTA_RESOURCES:
            snap.quota.append(
                (org.slug, tier, r, float(u.used[r].value), float(org.plan.quota[r].value))
            )
        snap.quota.append((org.slug, tier, "agents", float(u.agents), float(org.plan.agent_limit)))
    snap.orgs = sorted(tiers.items())


async def _per_agent(p: Platform, snap: Snapshot, by_id: dict[str, Organization]) -> None:
    snapshot = p.dispatcher.snapshot
    running = [
        (agent, by_id[agent.org_id])
        for agents in (await snapshot.agents()).values()
        for agent in agents
        if agent.state is AgentState.RUNNING and agent.org_id in by_id
    ]
    measured_all: dict[str, Any] = {}
    measure_many = getattr(p.runtime, "usage_many", None)
    measure = getattr(p.runtime, "usage", None)
    if measure_many is not None:  # one read of the process table for every agent
        cache, moment = p.measured, time.monotonic()
        if not cache.fresh({agent.id for agent, _ in running}, moment):
            asked = [(owner.slug, agent.id) for agent, owner in running]
            cache.usage = await measure_many(asked, uss=False)  # metrics show CPU and RSS
            cache.at = moment
        measured_all = cache.usage
    for agent, owner in running:
        if measure_many is not None:
            measured = measured_all.get(agent.id)
        else:
            measured = await measure(owner.slug, agent.id) if measure is not None else None
        snap.usage.append(
            AgentUsage(
                org=owner.slug,
                tier=owner.plan.name,
                agent=agent.id,
                cpu_request_cores=float(agent.resources.cpu_request.value),
                memory_request_bytes=float(agent.resources.memory_request.value),
                cpu_seconds=None if measured is None else measured.cpu_seconds,
                rss_bytes=None if measured is None else float(measured.rss_bytes),
            )
        )


async def org_figures(p: Platform, org_slug: str) -> dict[str, Any]:
    """One org's own figures (agents by state, tasks by state, measured usage)."""
    snap = await refresh_metrics(p)
    agents: dict[str, int] = {}
    for org, _, state, n in snap.agents:
        if org == org_slug:
            agents[state] = agents.get(state, 0) + n
    tasks: dict[str, int] = {}
    for org, _, _, state, n in snap.tasks:
        if org == org_slug:
            tasks[state] = tasks.get(state, 0) + n
    cpu = sum(u.cpu_seconds or 0.0 for u in snap.usage if u.org == org_slug)
    rss = sum(u.rss_bytes or 0.0 for u in snap.usage if u.org == org_slug)
    depth = sum(n for org, _, n in snap.queue_depth if org == org_slug)
    return {
        "agents": agents,
        "tasks": tasks,
        "queueDepth": depth,
        "measured": {"cpuSeconds": round(cpu, 3), "rssBytes": int(rss)},
    }
