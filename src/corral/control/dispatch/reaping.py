"""The reaper: agents that sat idle past their org's timeout are paused to zero, and running
agents that stopped heartbeating are handed to the controller to restart.

It runs from the dispatch loop, at most once a second (rounds follow events, so they may come
far more often), because idleness is the dispatcher's knowledge: an agent is idle when the task
book holds nothing for it, and its last activity is the last time it took or ended a task (or
started) — a heartbeat says it is alive, not that it is working. From the moment it is chosen
for a pause an agent is given no new work. What a pause or a restart does to an agent is the
controller's business; an agent restarted for silence may be judged silent again only once it
has been heard from since. While the bus does not answer, and for as long after it answers
again as a heartbeat may take to be heard, no agent is judged silent
(:mod:`corral.control.bus_health`); nor is one judged by a silence that began before this
dispatcher listened (:meth:`Reaper.listening`): after a restart, the time no control plane
ran is nobody's silence, and an agent adopted then has the whole limit to be heard.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime

from corral.control.background import Background
from corral.control.lifecycle import Controller
from corral.domain.agents import Agent, AgentState
from corral.domain.errors import CorralError
from corral.domain.roles import Role
from corral.domain.tenancy import Organization

__all__ = ["Reaper"]

log = logging.getLogger("corral.dispatcher")

REAP_EVERY = 1.0  # seconds between two looks at the agents


class Reaper:
    def __init__(
        self,
        *,
        controller: Controller,
        orgs: Mapping[str, Organization],
        inflight: Mapping[str, Collection[str]],
        last_active: Mapping[str, float],
        leaving: set[str],
        background: Background,
        on_capacity: Callable[[str], None],
        idle_timeout: Callable[[Organization], float],
        heartbeat_seconds: float,
        role: Callable[[str, str | None], Role | None] = lambda org_id, name: None,
    ) -> None:
        self._controller = controller
        self._orgs = orgs  # the task book's organizations, by id
        self._inflight = inflight  # the task book's: agent id → tasks it holds
        self._last_active = last_active  # the task book's: agent id → when it last worked
        self._leaving = leaving  # the snapshot's: agents given no new work
        self._background = background
        self._on_capacity = on_capacity
        self.idle_timeout = idle_timeout
        self.heartbeat_seconds = heartbeat_seconds
        self._role = role  # an org's declared role of that name
        self._silenced: set[str] = set()  # being restarted for a lost heartbeat
        self._last = 0.0
        self._since = datetime.now(UTC)  # heartbeats heard from then on

    def listening(self, since: datetime | None = None) -> None:
        """Heartbeats are heard from now (or ``since``) on: the dispatch loop starts. An
        agent's silence is counted from then at the earliest."""
        self._since = since or datetime.now(UTC)

    def heard(self, agent_id: str) -> None:
        """The agent spoke: if it was restarted for silence, it may be judged again."""
        self._silenced.discard(agent_id)

    async def reap(self) -> None:
        """Look at the running agents, unless that was done less than a second ago."""
        if time.monotonic() - self._last < REAP_EVERY:
            return
        self._last = time.monotonic()
        running = await self._controller.agents.find(states=[AgentState.RUNNING])
        self._reap_idle(running)
        self._reap_silent(running)

    def _reap_silent(self, running: list[Agent]) -> None:
        """A running agent that stopped heartbeating is hung or cut off: the controller
        restarts it and its work is retried, as after a crash."""
        limit = self._controller.silence_limit
        calm = self._controller.bus_health.calm_for()
        if calm < limit:  # the bus silenced everyone (or did lately): nobody is judged by it
            return
        now = datetime.now(UTC)
        for agent in running:
            seen = max(agent.last_seen_at or agent.resumed_at or agent.created_at, self._since)
            if (now - seen).total_seconds() < limit:
                continue
            org = self._orgs.get(agent.org_id)
            if org is None or agent.id in self._silenced:
                continue
            self._silenced.add(agent.id)
            log.warning(
                "%s sent no heartbeat for %.0fs: restarting it",
                agent.id,
                limit,
                extra={"agent": agent.id},
            )
            self._background.spawn(
                self._controller.heartbeat_lost(org, agent), f"silent-{agent.id}"
            )

    def _reap_idle(self, running: list[Agent]) -> None:
        """Pause agents idle past their role's timeout (or their org's), but never below the
        ``minAgents`` their role keeps warm."""
        now = datetime.now(UTC)
        up: dict[tuple[str, str], int] = {}
        for agent in running:
            if agent.id not in self._leaving:
                key = (agent.org_id, agent.role)
                up[key] = up.get(key, 0) + 1
        for agent in running:
            if self._inflight.get(agent.id) or agent.id in self._leaving:
                continue
            org = self._orgs.get(agent.org_id)
            if org is None:
                continue
            role = self._role(agent.org_id, agent.role)
            timeout = self.idle_timeout(org)
            if role is not None and role.idle_timeout is not None:
                timeout = role.idle_timeout
            key = (agent.org_id, agent.role)
            if role is not None and up[key] <= role.min_agents:
                continue  # kept warm
            if self._idle_for(agent, now) >= timeout:
                up[key] -= 1
                log.info("pausing %s after %ss idle", agent.id, timeout)
                self._leaving.add(agent.id)  # from now on it is given nothing
                self._background.spawn(self._pause_idle(org, agent.id), f"idle-pause-{agent.id}")

    async def _pause_idle(self, org: Organization, agent_id: str) -> None:
        try:
            with contextlib.suppress(CorralError):
                await self._controller.pause(org, agent_id)
        finally:
            self._leaving.discard(agent_id)
            self._on_capacity(org.id)

    def _idle_for(self, agent: Agent, now: datetime) -> float:
        """Seconds since the agent last took or ended a task, or (re)started."""
        started = (agent.resumed_at or agent.created_at).timestamp()
        return now.timestamp() - max(self._last_active.get(agent.id, 0.0), started)
