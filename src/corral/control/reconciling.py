"""What a control plane does at start-up (and a replica when it takes over) before it
dispatches: record what agents reported while no control plane listened, then compare the
registry with what runs.

Every agent whose process is not this control plane's child is stopped and started again (a
local agent dies with the control plane that started it, see docs/ha.md), so the work any of
them held is lost and is retried. Restarts run side by side: a takeover waits for the slowest
agent, not for all of them in turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from corral.domain.agents import Agent, AgentState
from corral.domain.errors import CorralError
from corral.runtime.base import Phase
from corral.runtime.local.confinement import Confinement
from corral.settings import Settings

if TYPE_CHECKING:
    from corral.bus.platform import PlatformBus
    from corral.control.platform import Platform

__all__ = ["Phases", "drain_events", "reconcile", "warm_up"]

log = logging.getLogger("corral.platform")

#: agents restarted at once while reconciling
PARALLEL_RESTARTS = 16


def warm_up(settings: Settings) -> None:
    """What a replica standing by does before it may lead, to take over sooner: probe what the
    host offers local agents' sandbox (about a second; kept for the process's life)."""
    if settings.runtime == "local" and settings.sandbox != "off":
        Confinement.detect(settings.sandbox)


async def drain_events(bus: PlatformBus, *, timeout: float = 10.0) -> None:
    """Let the event consumer record what agents reported while the control plane was down,
    before in-flight work is judged lost: wait until EVENTS has no backlog."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await bus.events_backlog() > 0:
        if asyncio.get_running_loop().time() > deadline:
            log.warning("events still pending after %.0fs; reconciling anyway", timeout)
            return
        await asyncio.sleep(0.02)


async def reconcile(p: Platform) -> None:
    """Stop leftovers, restart what should run, finish interrupted pauses; then every task an
    agent held is lost and retried."""
    records: dict[str, Agent] = {a.id: a for a in await p.agents.find()}
    for found in await p.runtime.list_agents():
        rec = records.get(found.agent_id)
        if found.phase is Phase.RUNNING and (rec is None or rec.state is not AgentState.RUNNING):
            log.info("stopping leftover agent process %s", found.agent_id)
            await p.runtime.stop(found.org, found.agent_id, grace=1.0)
    room = asyncio.Semaphore(PARALLEL_RESTARTS)

    async def one(agent: Agent) -> None:
        async with room:
            org = await p.orgs.get_by_id(agent.org_id)
            if agent.state in (AgentState.RUNNING, AgentState.PROVISIONING, AgentState.RESUMING):
                status = await p.runtime.status(org.slug, agent.id)
                if status.phase is Phase.RUNNING:
                    await p.runtime.stop(org.slug, agent.id, grace=1.0)
                try:
                    await p.controller.restart_now(org, agent)
                except CorralError as exc:
                    log.error("could not restart %s: %s", agent.id, exc.message)
            elif agent.state is AgentState.PAUSING:
                await p.runtime.stop(org.slug, agent.id, grace=1.0)
                await p.controller.finish_pause(org, agent)

    await asyncio.gather(*(one(agent) for agent in records.values()))
    for agent_id in p.dispatcher.holders():
        await p.dispatcher.agent_lost(agent_id, why="the control plane restarted")


class Phases:
    """How long each step of a start took, for the log: a takeover's time is spent there."""

    def __init__(self) -> None:
        self._last = self._first = time.monotonic()
        self._took: list[tuple[str, float]] = []

    def mark(self, step: str) -> None:
        now = time.monotonic()
        self._took.append((step, now - self._last))
        self._last = now

    def __str__(self) -> str:
        steps = ", ".join(f"{step} {took:.2f}" for step, took in self._took)
        return f"{self._last - self._first:.2f}s ({steps})"
