"""Start-up recovery: what the registry says should run is brought back after a restart.

The API serves first; recovery runs beside it in the background. It pushes the accounts and
streams of the orgs with agents to bring back (the server kept them; this only matters if a
plan changed or the server lost them), lets the event consumer record what agents reported
while the control plane was down, stops leftover processes, relaunches every agent that should
be running — several at a time, with its progress in the log and in ``/healthz`` — finishes
interrupted pauses, and only then retries the work the stopped agents held and starts
dispatching (tasks submitted meanwhile wait in their queues). The other orgs' accounts are
pushed again after that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.domain import repairs
from corral.domain.agents import Agent, AgentState
from corral.domain.errors import CorralError
from corral.domain.repairs import Repair
from corral.runtime.base import Phase, RuntimeStatus
from corral.runtime.local.confinement import Confinement
from corral.settings import Settings

if TYPE_CHECKING:
    from corral.control.platform import Platform

__all__ = [
    "LIVE",
    "RELAUNCH_CONCURRENCY",
    "LeftBehind",
    "Phases",
    "Recovery",
    "left_behind",
    "reconcile",
    "warm_up",
]

log = logging.getLogger("corral.recovery")

#: agents relaunched at once after a restart (each start is mostly waiting on its process)
RELAUNCH_CONCURRENCY = 8
#: the states of an agent that should be running (or finish pausing) after a restart
LIVE = repairs.SHOULD_RUN | {AgentState.PAUSING}


@dataclass
class Recovery:
    """The progress of start-up recovery (``done`` once every agent is back)."""

    phase: str = "restoring organizations"
    total: int = 0
    relaunched: int = 0
    failed: int = 0
    done: bool = False

    def describe(self) -> str:
        if self.done:
            return "done"
        if self.phase != "relaunching agents":
            return self.phase
        return f"relaunching agents: {self.relaunched + self.failed}/{self.total}"


async def drain_events(p: Platform, *, timeout: float = 10.0) -> None:
    """Let the event consumer record what agents reported while the control plane was down,
    before in-flight work is judged lost: wait until EVENTS has no backlog."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await p.bus.events_backlog() > 0:
        if asyncio.get_running_loop().time() > deadline:
            log.warning("events still pending after %.0fs; reconciling anyway", timeout)
            return
        await asyncio.sleep(0.05)


@dataclass(frozen=True, slots=True)
class LeftBehind:
    """What the registry and the runtime held when the control plane started, taken before
    the API serves: recovery judges these alone, never an agent the API made since."""

    records: dict[str, Agent]
    processes: list[RuntimeStatus]
    deleting: set[str]


async def left_behind(p: Platform) -> LeftBehind:
    return LeftBehind(
        records={a.id: a for a in await p.agents.find()},
        processes=list(await p.runtime.list_agents()),
        deleting={o.id for o in await p.orgs.deleting()},  # their agents go with them
    )


async def reconcile(p: Platform, left: LeftBehind, progress: Recovery, *, concurrency: int) -> None:
    """Compare what was left with what should run (:func:`corral.domain.repairs.repair`):
    stop leftovers, restart what should run (up to ``concurrency`` at once), finish
    interrupted pauses. Every agent's process was stopped or restarted, so the work any of
    them held is lost: it is retried."""
    records, deleting = left.records, left.deleting

    def decide(agent: Agent | None, *, process_running: bool) -> Repair:
        return repairs.repair(
            agent.state if agent else None,
            process_running=process_running,
            after_restart=True,
            org_deleting=agent is not None and agent.org_id in deleting,
        )

    running: set[str] = set()
    for found in left.processes:
        if found.phase is not Phase.RUNNING:
            continue
        running.add(found.agent_id)
        if decide(records.get(found.agent_id), process_running=True) is Repair.STOP:
            log.info("stopping leftover agent process %s", found.agent_id)
            await p.runtime.stop(found.org, found.agent_id, grace=1.0)
    todo = [
        (agent, what)
        for agent in records.values()
        if (what := decide(agent, process_running=agent.id in running))
        in (Repair.RESTART, Repair.FINISH_PAUSE)
    ]
    progress.total = len(todo)
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    step = max(1, len(todo) // 10)

    async def one(agent: Agent, what: Repair) -> None:
        async with gate:
            try:
                await _bring_back(p, agent, what)
            except CorralError as exc:
                progress.failed += 1
                log.error("could not restart %s: %s", agent.id, exc.message)
                await _start_again(p, agent.id)
            except Exception:
                progress.failed += 1
                log.exception("could not restart %s", agent.id)
            else:
                progress.relaunched += 1
        count = progress.relaunched + progress.failed
        if count % step == 0 or count == progress.total:
            log.info(
                "relaunched %d/%d agents (%d failed) in %.1fs",
                count,
                progress.total,
                progress.failed,
                time.monotonic() - started,
            )

    await asyncio.gather(*(one(agent, what) for agent, what in todo))
    for agent_id in p.dispatcher.holders():
        held_by = records.get(agent_id)
        why = repairs.work_lost(agent_id, held_by.state if held_by else None, after_restart=True)
        if why is not None:
            await p.dispatcher.agent_lost(agent_id, why=why)


async def _start_again(p: Platform, agent_id: str) -> None:
    """A relaunch that failed (the bus did not answer, say) is not the end: an agent it left
    starting is started again as after a crash, tried again while the bus does not answer."""
    try:
        agent = await p.agents.get(agent_id)
        if agent.state in (AgentState.PROVISIONING, AgentState.RESUMING):
            p.controller.start_again(await p.orgs.get_by_id(agent.org_id), agent.id)
    except CorralError as exc:
        log.error("could not schedule a restart of %s: %s", agent_id, exc.message)


async def _bring_back(p: Platform, agent: Agent, what: Repair) -> None:
    org = await p.orgs.get_by_id(agent.org_id)
    if what is Repair.RESTART:
        status = await p.runtime.status(org.slug, agent.id)
        if status.phase is Phase.RUNNING:
            await p.runtime.stop(org.slug, agent.id, grace=1.0)
        await p.controller.restart_now(org, agent)
    else:  # an interrupted pause
        await p.runtime.stop(org.slug, agent.id, grace=1.0)
        await p.controller.finish_pause(org, agent)


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


def warm_up(settings: Settings) -> None:
    """What a replica standing by does before it may lead, to take over sooner: probe what the
    host offers local agents' sandbox (about a second; kept for the process's life)."""
    if settings.runtime == "local" and settings.sandbox != "off":
        Confinement.detect(settings.sandbox)
