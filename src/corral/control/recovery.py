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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from corral.domain import repairs
from corral.domain.agents import Agent, AgentState
from corral.domain.errors import CorralError
from corral.domain.repairs import Repair
from corral.runtime.base import Adopting, Phase, RuntimeStatus
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
    "release_events",
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
    adopted: int = 0
    relaunched: int = 0
    failed: int = 0
    done: bool = False

    def describe(self) -> str:
        if self.done:
            return "done"
        if self.phase != "relaunching agents":
            return self.phase
        return f"relaunching agents: {self.relaunched + self.adopted + self.failed}/{self.total}"


async def drain_events(p: Platform, *, timeout: float = 10.0) -> None:
    """Let the event consumer record what agents reported while the control plane was down,
    before in-flight work is judged lost: wait until every event stored when this began is
    recorded (agents adopted at a takeover go on reporting meanwhile; their newer events
    need not be waited for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        marks = await p.bus.events_marks()
        while marks and not await p.bus.events_recorded(marks):
            if loop.time() > deadline:
                log.warning("events still pending after %.0fs; reconciling anyway", timeout)
                return
            await asyncio.sleep(0.05)
    except CorralError as exc:
        log.warning("events not drained (%s); reconciling anyway", exc.message)


async def release_events(p: Platform, left: LeftBehind) -> None:
    """At every start (a replica taking over, or a control plane after a kill -9): the
    events the predecessor received and never acknowledged are delivered again at once
    instead of after the consumer's ack wait (or, acknowledged cumulatively, never), in the
    orgs with agents that should run (the others' wait). Before the event consumer starts,
    so that nothing of this control plane's own is pending yet."""
    orgs = {a.org_id for a in left.records.values() if a.state in LIVE}
    gate = asyncio.Semaphore(16)

    async def release(org_id: str) -> int:
        async with gate:
            try:
                org = await p.orgs.get_by_id(org_id)
                return await p.bus.release_events(org.slug)
            except CorralError as exc:
                log.warning("events of %s not released: %s", org_id, exc.message)
                return 0

    released = sum(await asyncio.gather(*(release(o) for o in sorted(orgs))))
    if released:
        log.info("%d events the previous control plane held are delivered again", released)


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


async def reconcile(
    p: Platform,
    left: LeftBehind,
    progress: Recovery,
    *,
    concurrency: int,
    drain: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Compare what was left with what should run (:func:`corral.domain.repairs.repair`):
    stop leftovers, adopt what runs and may be
    adopted (a replica taking over), restart the rest of what should run (up to
    ``concurrency`` at once), finish interrupted pauses. The work an adopted agent held goes
    on (what was dispatched to it is delivered again, and dropped if it had arrived); every
    other agent's process was stopped or restarted, so the work it held is retried — after
    ``drain`` (:func:`drain_events`), which is skipped when every agent was adopted and
    nothing is judged lost."""
    records, deleting = left.records, left.deleting
    adopted: set[str] = set()

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
    # the last time the previous control plane heard any agent: nobody was heard after it
    # died (nor, in a single control plane, while its bus was down), and that is no agent's
    # silence
    heard = [a.last_seen_at for a in records.values() if a.last_seen_at is not None]
    heard_until = max(heard) if heard else None

    async def adopt(agent: Agent) -> None:
        async with gate:
            try:
                if await _adopt(p, agent, heard_until):
                    adopted.add(agent.id)
                    progress.adopted += 1
            except CorralError as exc:
                log.warning("could not adopt %s: %s", agent.id, exc.message)

    await asyncio.gather(*(adopt(agent) for agent, what in todo if what is Repair.RESTART))
    rest = [(a, what) for a, what in todo if a.id not in adopted]
    if drain is not None and (rest or set(p.dispatcher.holders()) - adopted):
        await drain()

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
        count = progress.relaunched + progress.failed + progress.adopted
        if count % step == 0 or count == progress.total:
            log.info(
                "brought back %d/%d agents (%d adopted, %d failed) in %.1fs",
                count,
                progress.total,
                progress.adopted,
                progress.failed,
                time.monotonic() - started,
            )

    await asyncio.gather(*(one(agent, what) for agent, what in rest))
    if adopted:
        log.info("adopted %d agents", len(adopted))
    for agent_id in p.dispatcher.holders():
        held_by = records.get(agent_id)
        why = repairs.work_lost(agent_id, held_by.state if held_by else None, after_restart=True)
        if agent_id not in adopted and why is not None:
            await p.dispatcher.agent_lost(agent_id, why=why)
    if adopted:
        await p.dispatcher.resend(adopted)


async def _adopt(p: Platform, agent: Agent, heard_until: datetime | None) -> bool:
    """Adopt a running agent the previous control plane left: its process is alive, a fork
    server keeps it, it was heard from on the bus within the silence limit of the last time
    any agent was (``heard_until``), and it reaches this control plane's bus and model
    gateway as it reached the last one's."""
    runtime = p.runtime
    if not p.may_adopt or agent.state is not AgentState.RUNNING:
        return False
    if not isinstance(runtime, Adopting) or agent.last_seen_at is None:
        return False
    silent = ((heard_until or datetime.now(UTC)) - agent.last_seen_at).total_seconds()
    if silent > p.controller.silence_limit:
        log.info("not adopting %s: silent for %.0fs", agent.id, silent)
        return False
    org = await p.orgs.get_by_id(agent.org_id)
    status = await runtime.adopt(org.slug, agent.id)
    if status is None:
        return False
    log.info("adopted %s (pid %s)", agent.id, status.pid)
    return True


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
    await p.restore_org(org)
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
