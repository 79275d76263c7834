"""What the dispatcher knows of agents when it places work: a snapshot of their lifecycle
states and of each org's quota use, the slots each agent announced, and each round's placement
views built from them.

Reading every agent for every round would cost a query per event under load, so the snapshot is
reused for up to a second; a change the controller reports is put into it at once (the agent as
now stored), and a snapshot read across such a change is read again (a generation counter
tells). Placement itself is the
pure :func:`corral.scheduling.placement.place`; this module feeds it and remembers which agents
are already on their way (being provisioned or woken). A new agent is allowed only for a
declared role whose queue needs more than it has running and on its way, within its
``maxAgents`` and the org's quota (see :mod:`corral.control.dispatch.supply`). When a task must
wait, the reason it is given names what a user can act on: no agent serves its role and none is
declared, the quota that refuses a new one (``agents 10/10``), the role's ``maxAgents``, or the
agent that is waking from a pause.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from corral.domain.admission import (
    ContainerRequest,
    UsageSnapshot,
    charge_for,
    check_quota,
)
from corral.domain.agents import MAX_SLOTS, Agent, AgentState
from corral.domain.errors import InvalidInput, QuotaExceeded
from corral.domain.ids import AgentId
from corral.domain.messages import StatusKind
from corral.domain.quantities import ZERO
from corral.domain.roles import Role, agents_needed
from corral.domain.tasks import Requirements
from corral.domain.tenancy import Organization
from corral.scheduling.placement import (
    Action,
    AgentAvailability,
    AgentView,
    Placement,
    fits,
    place,
    wait,
)
from corral.scheduling.scheduler import QueuedTask
from corral.store.quota import QuotaLedger

__all__ = ["AgentSnapshot", "Views", "mark", "request_for", "take"]

#: seconds a snapshot of the agents is reused: every change the controller reports is put into
#: it at once, so reading them all again only guards against news that never came
AGENT_LIST_TTL = 5.0
#: seconds a snapshot of the orgs' quota use is reused: the ledger tells of every charge and
#: release (the org's use is read again then), so reading them all again only guards against
#: news that never came
USAGE_TTL = 10.0

Incoming = tuple[str, str | None]  # (org id, role) of agents on their way


class AgentSnapshot:
    def __init__(
        self,
        *,
        find_agents: Callable[[list[AgentState]], Awaitable[list[Agent]]],
        ledger: QuotaLedger,
        inflight: Mapping[str, Collection[str]],
        roles: Callable[[str], list[Role]] = lambda org_id: [],
        queued: Callable[[str, str | None], int] = lambda org_id, role: 0,
    ) -> None:
        self._find = find_agents
        self._ledger = ledger
        self._inflight = inflight  # the task book's: agent id → tasks it holds
        self._roles = roles  # an org's declared roles
        self._queued = queued  # how many tasks of an org wait for a role
        #: names of new agents decided on but not yet in the snapshot, by (org id, role)
        self.pending: dict[Incoming, set[str]] = defaultdict(set)
        self.slots: dict[str, int] = {}  # what each running agent announced
        self.batching: set[str] = set()  # agents that said they read batches of tasks
        self.leaving: set[str] = set()  # being paused for idleness: no new work
        self.waking: set[str] = set()  # paused agents being woken: not to be woken again
        self.incoming: dict[Incoming, int] = defaultdict(int)
        self._agents: dict[str, list[Agent]] | None = None
        self._agents_at = 0.0
        self._generation = 0  # bumped by every change: a snapshot read across one is stale
        self._usage: dict[str, UsageSnapshot] | None = None
        self._usage_at = 0.0
        self._usage_stale: set[str] = set()  # orgs whose use changed since it was read
        self._unread: set[str] = set()  # orgs placement found no use of (placed again later)

    # -- what changed ---------------------------------------------------------------------
    def forget(self) -> None:
        """The agents may have changed unreported: the next round reads them all again."""
        self._agents = None
        self._generation += 1

    def forget_usage(self, org_id: str | None = None) -> None:
        """Quota use changed: ``org_id``'s (read again alone at the next :meth:`usage`), or
        anyone's."""
        if org_id is None:
            self._usage = None
        else:
            self._usage_stale.add(org_id)

    def agent_changed(self, agent: Agent) -> None:
        """The controller's news of an agent (as now stored): put in the snapshot held, in
        place of reading every agent again, which each wake of hundreds of paused agents
        made every round do."""
        self._generation += 1  # a read under way may have missed it: it reads again
        self._apply(agent)
        if agent.state is not AgentState.RUNNING:
            self.slots.pop(agent.id, None)
        if agent.state is AgentState.TERMINATED:  # gone for good: nothing kept of it
            self.batching.discard(agent.id)

    def _apply(self, agent: Agent) -> None:
        if self._agents is None:
            return
        mine = list(self._agents.get(agent.org_id, ()))
        at = next((n for n, a in enumerate(mine) if a.id == agent.id), None)
        if agent.state is AgentState.TERMINATED:
            if at is not None:
                del mine[at]
        elif at is None:
            mine.append(agent)
        else:
            mine[at] = agent  # in its place: placement's order is kept
        agents = dict(self._agents)  # a copy: a round's views keep what they were given
        if mine:
            agents[agent.org_id] = mine
        else:
            agents.pop(agent.org_id, None)
        self._agents = agents

    def agent_lost(self, agent_id: str) -> None:
        self.forget()
        self.slots.pop(agent_id, None)

    def agent_ready(self, agent: Agent) -> None:
        """The agent reported ready: one fewer on its way for its (org, role)."""
        self._generation += 1
        self._apply(agent)
        key = (agent.org_id, agent.role)
        if self.incoming.get(key):
            self.incoming[key] -= 1

    def announce(self, agent_id: str, kind: StatusKind, detail: Mapping[str, Any]) -> None:
        """What a ready or heartbeating agent says of itself: its slots, whether it reads
        batches of tasks."""
        slots = detail.get("slots")
        if isinstance(slots, int) and not isinstance(slots, bool) and slots > 0:
            self.slots[agent_id] = min(slots, MAX_SLOTS)
        if detail.get("batches") is True:
            self.batching.add(agent_id)
        elif kind is StatusKind.READY:
            self.batching.discard(agent_id)

    # -- reading --------------------------------------------------------------------------
    async def agents(self) -> dict[str, list[Agent]]:
        """Every agent that is not terminated, by org, from a snapshot at most a second old
        (changes the controller reports drop it at once)."""
        now = time.monotonic()
        if self._agents is not None and now - self._agents_at <= AGENT_LIST_TTL:
            return self._agents
        live: list[AgentState] = [s for s in AgentState if s is not AgentState.TERMINATED]
        while True:
            generation = self._generation
            by_org: dict[str, list[Agent]] = defaultdict(list)
            for agent in await self._find(live):
                by_org[agent.org_id].append(agent)
            if generation == self._generation:  # no change while it was read
                break
        self._agents = dict(by_org)
        self._agents_at = now
        return self._agents

    def role(self, org_id: str, name: str | None) -> Role | None:
        """The org's declared role ``name`` (``None``: none)."""
        return next((r for r in self._roles(org_id) if r.name == name), None)

    def unread(self) -> set[str]:
        """The orgs whose tasks waited this round because their use was not in the snapshot
        (it is read at the next round, and their tasks are to be placed again then)."""
        unread, self._unread = self._unread, set()
        return unread

    async def usage(self) -> dict[str, UsageSnapshot]:
        """Each org's quota use, from a snapshot at most :data:`USAGE_TTL` old; an org whose
        use the ledger charged or released since is read again alone (a wave of wakes across
        hundreds of orgs read every org's use again at every wake). A stale answer only costs
        a provision the ledger refuses: the charge itself is atomic."""
        now = time.monotonic()
        if self._usage is None or now - self._usage_at > USAGE_TTL:
            self._usage_stale = set()  # before the read: what changes during it comes again
            self._usage = await self._ledger.all_usage()
            self._usage_at = now
        elif self._usage_stale:
            stale, self._usage_stale = self._usage_stale, set()
            fresh = await self._ledger.usage_of(stale)
            usage = dict(self._usage)  # a copy: what was handed out stays as it was
            for org_id in stale:
                if org_id in fresh:
                    usage[org_id] = fresh[org_id]
                else:
                    usage.pop(org_id, None)
            self._usage = usage
        return self._usage

    async def views(self) -> Views:
        return Views(await self.agents(), self.view_of)

    def view_of(self, a: Agent) -> AgentView:
        """The agent as placement sees it now: its free slots come from the work in flight."""
        if a.id in self.waking and a.state is not AgentState.RUNNING:
            return AgentView(a.id, a.role, AgentAvailability.UNAVAILABLE, a.resources)
        if a.state is AgentState.RUNNING and a.id not in self.leaving:
            # what it announced, never more than it was provisioned with
            free = min(self.slots.get(a.id, 1), a.slots) - len(self._inflight.get(a.id, ()))
            availability = AgentAvailability.IDLE if free > 0 else AgentAvailability.BUSY
            return AgentView(a.id, a.role, availability, a.resources, max(0, free))
        if a.state is AgentState.RUNNING:
            return AgentView(a.id, a.role, AgentAvailability.UNAVAILABLE, a.resources)
        return _view(a)

    # -- placing --------------------------------------------------------------------------
    def place(
        self,
        task: QueuedTask,
        org: Organization,
        views: Views,
        usage: dict[str, UsageSnapshot],
        *,
        auto_provision: bool,
    ) -> Placement:
        refused: list[str] = []  # why no agent may be provisioned for it

        def may_provision() -> bool:
            role = self.role(org.id, task.role)
            if role is None:
                if task.role is not None and not any(
                    a.role == task.role and a.state not in _GONE for a in views.agents(org.id)
                ):
                    refused.append(
                        f"no agent serves role {task.role} and no role {task.role} is declared"
                    )
                return False
            if not auto_provision:
                refused.append("automatic provisioning is off")
                return False
            if not role.on_demand:
                refused.append(f"role {role.name} is not provisioned on demand")
                return False
            for a in views.agents(org.id):
                if a.role == role.name and a.state is AgentState.PAUSING:
                    refused.append(f"agent {a.id} of the role is pausing")  # then woken
                    return False
            live, needed = self._needs(org.id, role, views)
            if needed <= 0:
                if live >= role.max_agents:
                    refused.append(f"role {role.name} is at maxAgents ({role.max_agents})")
                return False
            snap = usage.get(org.id)
            if snap is None:  # an org newer than the snapshot: read at the next round
                self._usage_stale.add(org.id)
                self._unread.add(org.id)
                refused.append("its quota use is being read")
                return False
            try:
                res = role.resources(org.plan.limit_range)
                charge = charge_for(res)
                check_quota(
                    org.plan,
                    snap.used,
                    charge,
                    agents_used=snap.agents,
                    new_agents=1,
                    gpus_used=snap.gpus,
                    new_gpus=res.gpu,
                )
            except QuotaExceeded as exc:
                d = exc.details
                refused.append(f"quota {d.get('resource')} {d.get('used')}/{d.get('allowed')}")
                return False
            except InvalidInput as exc:
                refused.append(exc.message)
                return False
            view = AgentView(AgentId("-"), role.name, AgentAvailability.IDLE, res, role.slots)
            if not fits(view, role=task.role, requirements=task.requirements):
                refused.append(f"the task needs more than a {role.name} agent has")
                return False
            # counted at once: the next placement of this round sees it
            snap.used = {k: v + charge.get(k, ZERO) for k, v in snap.used.items()}
            snap.agents += 1
            snap.gpus += res.gpu
            return True

        placement = place(task, views[org.id], may_provision=may_provision)
        if placement.action is not Action.WAIT:
            return placement
        return wait(self._why(task, org, views, refused) or placement.reason)

    def _needs(self, org_id: str, role: Role, views: Views) -> tuple[int, int]:
        """How many agents ``role`` has (running, starting, paused; those decided on
        included) and how many more its queue needs now."""
        key = (org_id, role.name)
        agents = [a for a in views.agents(org_id) if a.role == role.name and a.state not in _GONE]
        names = {a.name for a in agents}
        pending = sum(1 for n in self.pending[key] if n not in names)
        live = len(agents) + pending
        starting = sum(1 for a in agents if a.state in _STARTING) + pending
        free = sum(
            v.free_slots
            for v in views[org_id]
            if v.role == role.name and v.availability is AgentAvailability.IDLE
        )
        needed = agents_needed(
            role,
            queued=self._queued(org_id, role.name),
            free_slots=free,
            starting=max(starting, self.incoming[key]),
            live=live,
        )
        return live, needed

    def _why(
        self, task: QueuedTask, org: Organization, views: Views, refused: list[str]
    ) -> str | None:
        """Why ``task`` waits, in words a user can act on (None: placement's own)."""
        agents = views.agents(org.id)
        if task.agent_id is not None:
            state = next((a.state for a in agents if a.id == task.agent_id), None)
            woken = state is AgentState.PAUSED and self.incoming[(org.id, task.role)]
            if state is AgentState.RESUMING or woken:
                return f"agent {task.agent_id} is waking from a pause"
            return None if state is None else f"agent {task.agent_id} is {state.value}"
        if task.role is None:
            return None
        if refused and refused[0].startswith("no agent serves"):
            return refused[0]
        if self.incoming[(org.id, task.role)]:
            waking = [a.id for a in agents if a.role == task.role and a.state is _RESUMING]
            if waking:
                return f"waiting for paused agent {waking[0]} to wake"
            return f"waiting for a new {task.role!r} agent to start"
        if any(v.role == task.role for v in views[org.id]):
            what = f"every {task.role!r} agent is busy or does not fit the task"
        else:
            what = f"no agent of role {task.role!r}"
        return f"{what}; no new one: {refused[0]}" if refused else what


_RESUMING = AgentState.RESUMING
_GONE = frozenset({AgentState.TERMINATED, AgentState.FAILED})
_STARTING = frozenset({AgentState.PROVISIONING, AgentState.RESUMING})
_WAKING = frozenset({AgentState.PAUSING, AgentState.RESUMING})


class Views(dict[str, list[AgentView]]):
    """One round's snapshot of agents as placement sees them, built per org on first use:
    a round touches only the orgs whose tasks it places, however many agents exist."""

    def __init__(
        self, agents: dict[str, list[Agent]], view_of: Callable[[Agent], AgentView]
    ) -> None:
        super().__init__()
        self._agents = agents
        self._view_of = view_of

    def agents(self, org_id: str) -> list[Agent]:
        """The org's agents as this round read them (whatever changed since)."""
        return self._agents.get(org_id, [])

    def __missing__(self, org_id: str) -> list[AgentView]:
        views = [self._view_of(a) for a in self._agents.get(org_id, ())]
        self[org_id] = views
        return views


def request_for(req: Requirements) -> ContainerRequest:
    return ContainerRequest(cpu_request=req.cpu, memory_request=req.memory, gpu=req.gpu)


def _view(agent: Agent) -> AgentView:
    """An agent that is not running, as placement sees it."""
    if agent.state is AgentState.PAUSED:
        availability = AgentAvailability.PAUSED
    else:
        availability = AgentAvailability.UNAVAILABLE
    return AgentView(agent.id, agent.role, availability, agent.resources)


def take(views: dict[str, list[AgentView]], org_id: str, agent_id: AgentId) -> None:
    """One slot of the agent is taken in this round's snapshot."""
    lst = views[org_id]
    for i, v in enumerate(lst):
        if v.id == agent_id:
            free = max(0, v.free_slots - 1)
            availability = AgentAvailability.IDLE if free else AgentAvailability.BUSY
            lst[i] = AgentView(v.id, v.role, availability, v.resources, free)


def mark(
    views: dict[str, list[AgentView]],
    org_id: str,
    agent_id: AgentId,
    availability: AgentAvailability,
) -> None:
    lst = views[org_id]
    for i, v in enumerate(lst):
        if v.id == agent_id:
            lst[i] = AgentView(v.id, v.role, availability, v.resources)
