"""Agents for queued work, as each org's roles declare them.

Placement asks for an agent when no running one of the task's role has a free slot; it wakes a
paused one first, and asks for a new one only when the role is declared and its queue needs
more than what is running and on its way (:func:`corral.domain.roles.agents_needed`), within
``maxAgents`` and the quota (the snapshot decides; see
:meth:`~corral.control.dispatch.snapshot.AgentSnapshot.place`). A new agent runs the role's
program with its resources, slots and environment, and is named ``<role>-<n>`` with the
smallest ``n`` free. Its name is reserved the moment it is decided, so the next placement in
the same round already counts it: one task, at most one provision.

Each round also keeps every declared role as declared (:meth:`Supply.keep`): ``minAgents``
running (waking paused ones before starting new ones), and agents of an older version of the
role's spec retired once idle or paused, so that the new spec rolls out.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping

from corral.control.background import Background
from corral.control.dispatch.snapshot import AgentSnapshot
from corral.control.lifecycle import Controller
from corral.domain.agents import Agent, AgentState
from corral.domain.errors import CorralError
from corral.domain.ids import AgentId
from corral.domain.roles import Role
from corral.domain.tenancy import Organization

__all__ = ["Supply"]

log = logging.getLogger("corral.dispatcher")

WARM_RETRY = 5.0  # seconds before a refused warm agent is asked for again
_UP = frozenset({AgentState.RUNNING, AgentState.PROVISIONING, AgentState.RESUMING})
_GONE = frozenset({AgentState.TERMINATED, AgentState.FAILED})


class Supply:
    def __init__(
        self,
        *,
        controller: Controller,
        snapshot: AgentSnapshot,
        capacity_changed: Callable[[str], None],
        roles: Callable[[str], list[Role]],
        inflight: Mapping[str, Collection[str]],
        background: Background,
    ) -> None:
        self._controller = controller
        self._snapshot = snapshot
        self._capacity_changed = capacity_changed
        self._roles = roles  # an org's declared roles
        self._inflight = inflight  # the task book's: agent id → tasks it holds
        self._background = background
        self._waking = snapshot.waking  # agents being woken
        self._retiring: set[str] = set()  # agents of an older spec being terminated
        self._refused: dict[tuple[str, str | None], float] = {}  # key → when last refused

    # -- on demand ------------------------------------------------------------------------
    def reserve(self, org: Organization, role: str, agents: Iterable[Agent]) -> str:
        """A free name for a new agent of ``role`` (``agents``: the org's, as last read),
        counted from now as on its way."""
        taken = {a.name for a in agents}
        key = (org.id, role)
        taken |= self._snapshot.pending[key]
        n = 1
        while (name := f"{role[:26]}-{n}") in taken:
            n += 1
        self._snapshot.pending[key].add(name)
        return name

    async def provision(
        self, org: Organization, role_name: str | None, name: str, key: tuple[str, str | None]
    ) -> None:
        """Start the agent ``name`` of the declared role; if it will not come, placement tries
        again."""
        role = next((r for r in self._roles(org.id) if r.name == role_name), None)
        try:
            if role is None:  # deleted since it was decided
                self._not_coming(org, key)
                return
            try:
                agent = await self._controller.provision(
                    org,
                    name=name,
                    role=role.name,
                    request=role.request,
                    command=role.command,
                    slots=role.slots,
                    env=role.env,
                    role_version=role.version,
                )
                log.info(
                    "provisioned %s for role %s (version %d)",
                    agent.id,
                    role.name,
                    role.version,
                    extra={"org": org.slug, "agent": agent.id},
                )
            except CorralError as exc:
                log.warning(
                    "could not provision a %s agent for %s: %s", role.name, org.slug, exc.message
                )
                self._not_coming(org, key)
        finally:
            self._snapshot.pending[(org.id, role_name)].discard(name)

    async def wake(self, org: Organization, agent_id: AgentId, key: tuple[str, str | None]) -> None:
        self._waking.add(agent_id)
        try:
            await self._controller.resume(org, agent_id)
        except CorralError as exc:
            log.warning("could not resume %s: %s", agent_id, exc.message)
            self._not_coming(org, key)
        finally:
            self._waking.discard(agent_id)

    def _not_coming(self, org: Organization, key: tuple[str, str | None]) -> None:
        """An agent on its way for ``key`` will not come: place its tasks again."""
        self._snapshot.incoming[key] = max(0, self._snapshot.incoming[key] - 1)
        self._refused[key] = time.monotonic()
        self._snapshot.forget_usage(org.id)
        self._capacity_changed(org.id)

    # -- as declared ----------------------------------------------------------------------
    def keep(self, orgs: Mapping[str, Organization], agents: Mapping[str, list[Agent]]) -> None:
        """Every declared role of every org as declared: ``minAgents`` up, and agents of an
        older spec retired when idle or paused (new agents are of the new spec)."""
        for org_id, org in orgs.items():
            roles = self._roles(org_id)
            if not roles:
                continue
            mine = agents.get(org_id, [])
            for role in roles:
                of_role = [a for a in mine if a.role == role.name and a.state not in _GONE]
                self._roll_out(org, role, of_role)
                self._keep_warm(org, role, of_role, mine)

    def _roll_out(self, org: Organization, role: Role, agents: list[Agent]) -> None:
        for a in agents:
            if a.role_version is None or a.role_version == role.version:
                continue  # provisioned by hand, or of the current spec
            if a.id in self._retiring or a.id in self._waking:
                continue
            idle = a.state is AgentState.RUNNING and not self._inflight.get(a.id)
            if not (idle or a.state is AgentState.PAUSED):
                continue  # busy: replaced once idle
            if a.id in self._snapshot.leaving:
                continue  # being paused for idleness
            self._retiring.add(a.id)
            self._snapshot.leaving.add(a.id)  # from now on it is given nothing
            self._background.spawn(self._retire(org, a), f"retire-{a.id}")

    async def _retire(self, org: Organization, agent: Agent) -> None:
        try:
            with contextlib.suppress(CorralError):
                await self._controller.terminate(org, agent.id)
                log.info(
                    "retired %s: role %s is at a newer version than its %s",
                    agent.id,
                    agent.role,
                    agent.role_version,
                )
        finally:
            self._retiring.discard(agent.id)
            self._snapshot.leaving.discard(agent.id)
            self._capacity_changed(org.id)

    def _keep_warm(
        self, org: Organization, role: Role, agents: list[Agent], everyone: list[Agent]
    ) -> None:
        if role.min_agents == 0:
            return
        key = (org.id, role.name)
        names = {a.name for a in agents}
        pending = [n for n in self._snapshot.pending[key] if n not in names]
        current = [a for a in agents if a.id not in self._retiring]
        up = sum(1 for a in current if a.state in _UP or a.id in self._waking) + len(pending)
        short = role.min_agents - up
        if short <= 0:
            return
        for a in current:
            if short and a.state is AgentState.PAUSED and a.id not in self._waking:
                if a.role_version not in (None, role.version):
                    continue  # retired, not woken
                self._snapshot.incoming[key] += 1
                self._waking.add(a.id)
                self._background.spawn(self.wake(org, a.id, key), f"warm-{a.id}")
                short -= 1
        live = len(agents) + len(pending)
        if time.monotonic() - self._refused.get(key, -WARM_RETRY) < WARM_RETRY:
            return  # the last one was refused (the quota, say): not again at once
        while short > 0 and live < role.max_agents:
            name = self.reserve(org, role.name, everyone)
            self._snapshot.incoming[key] += 1
            self._background.spawn(self.provision(org, role.name, name, key), f"warm-{name}")
            short -= 1
            live += 1
