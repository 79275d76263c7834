"""Crashes and restarts: an agent's process that exits unasked, or goes silent, is restarted
with backoff; after :data:`MAX_RESTARTS` restarts in a row it is ``failed``, its quota released.

"In a row" means: a completed task ends a streak, and an exit that is not the agent's fault is
not counted — one while the bus did not answer (or shortly after; see
:mod:`corral.control.bus_health`), or one caused by the death of the fork server the agent was
forked from. A restart that fails while the bus does not answer is tried again, not held
against the agent.

This is a base of :class:`~corral.control.lifecycle.Controller`, which sets what it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from corral.control.background import Background
from corral.control.bus_health import BusHealth
from corral.control.launching import Launcher
from corral.control.ports import BusPort
from corral.control.records import AgentRecords
from corral.domain.admission import charge_for
from corral.domain.agents import HOLDS_POD, Agent, AgentState
from corral.domain.errors import CorralError
from corral.domain.ids import AgentId
from corral.domain.tenancy import Organization
from corral.runtime.base import Phase, RuntimeStatus
from corral.store.quota import QuotaLedger

__all__ = ["MAX_RESTARTS", "Restarts"]

log = logging.getLogger("corral.controller")

MAX_RESTARTS = 3


class Restarts(AgentRecords):
    # set by the controller
    ledger: QuotaLedger
    bus: BusPort
    bus_health: BusHealth
    silence_limit: float
    _launcher: Launcher
    _restarts: Background
    _steady: set[str]
    _pending: set[str]
    _org_by_id: Callable[[str], Awaitable[Organization]]

    # -- crashes --------------------------------------------------------------------------
    async def on_exit(self, status: RuntimeStatus) -> None:
        """A process exited without being asked (crashed, or exited with code 0): restart it
        with backoff, or mark it ``failed`` after repeated crashes; the work it held is
        retried."""
        if status.phase not in (Phase.CRASHED, Phase.EXITED):
            return
        if self._waited_for(status.agent_id):  # someone waits for it to be ready: say it now
            await self._exited_before_ready(
                status.org,
                status.agent_id,
                exit_text(status),
                then=f"it is restarted up to {MAX_RESTARTS} times, then failed",
            )
        await self._record_crash(status)
        await self.on_lost(status.agent_id, f"agent {status.agent_id} exited ({exit_text(status)})")

    async def heartbeat_lost(self, org: Organization, agent: Agent) -> None:
        """A running agent stopped heartbeating (hung or cut off): restart it, as after a crash."""
        await self.restart_hung(org, agent.id, "heartbeat lost")

    async def restart_hung(self, org: Organization, agent_id: str, why: str) -> None:
        """Stop an agent that does not do what it must (no heartbeat, a handler that would not
        stop) and restart it as after a crash; the work it held is retried."""
        with contextlib.suppress(CorralError):
            await self.runtime.stop(org.slug, agent_id, grace=1.0)
            await self._record_crash(
                RuntimeStatus(org.slug, agent_id, Phase.CRASHED, detail={"reason": why})
            )
        await self.on_lost(agent_id, f"agent {agent_id} was restarted: {why}")

    def work_done(self, agent_id: str) -> None:
        """The agent completed a task: its crashes so far are not "in a row" any more."""
        if agent_id not in self._steady:
            self._steady.add(agent_id)
            self._restarts.spawn(self.agents.update(agent_id, restarts=0), f"steady-{agent_id}")

    def _excused(self, status: RuntimeStatus) -> str | None:
        """Why this exit is not the agent's own crash (None: it is): the bus went away under
        it, or the fork server it was forked from was killed, taking it along."""
        if status.detail.get("reason") == "fork-server-died":
            return "its fork server died"
        if self.bus_health.disturbed(within=self.silence_limit):
            return "the bus was unavailable"
        return None

    async def _record_crash(self, status: RuntimeStatus) -> None:
        try:
            agent = await self.agents.get(status.agent_id)
        except CorralError:
            return
        if agent.state not in (AgentState.RUNNING, AgentState.PROVISIONING, AgentState.RESUMING):
            return
        org = await self._org_by_id(agent.org_id)
        excuse = self._excused(status)
        if excuse is not None:
            log.warning(
                "%s exited (%s) while %s: restarting, not counted",
                agent.id,
                exit_text(status),
                excuse,
            )
            if not await self._transition(
                agent.id,
                expect=[agent.state],
                to=AgentState.PROVISIONING,
                detail=f"restarting after exit: {exit_text(status)} ({excuse}; not counted)",
            ):
                return  # another report of the same exit moved it first and restarts it
            self._publish(await self.agents.get(agent.id))
            self._schedule(org, agent.id, 0.5)
            return
        restarts = agent.restarts + 1
        self._steady.discard(agent.id)
        if restarts > MAX_RESTARTS:
            detail = f"crashed {restarts} times in a row (last: {exit_text(status)})"
            await self._fail(org, agent, detail=detail, restarts=restarts)
            return
        if not await self._transition(
            agent.id,
            expect=[agent.state],
            to=AgentState.PROVISIONING,
            restarts=restarts,
            detail=f"restarting after exit: {exit_text(status)} ({restarts}/{MAX_RESTARTS})",
        ):
            return  # another report of the same exit (hung and silent, say) moved it first
        self._publish(await self.agents.get(agent.id))
        delay = min(10.0, 0.2 * 2 ** (restarts - 1))
        self._schedule(org, agent.id, delay)

    def start_again(self, org: Organization, agent_id: AgentId) -> None:
        """Start an agent left ``provisioning`` or ``resuming`` without a process (a start
        that failed while the bus did not answer, say) again, as a restart: tried again while
        the bus does not answer, ``failed`` on any other error."""
        self._schedule(org, agent_id, 0.5)

    def restarting(self, agent_id: str) -> bool:
        """Whether a start of ``agent_id`` is scheduled or under way (its lock is held by a
        provision, a resume or a restart)."""
        return agent_id in self._pending or self._lock(agent_id).locked()

    def _schedule(self, org: Organization, agent_id: AgentId, delay: float) -> None:
        self._pending.add(agent_id)
        self._restarts.spawn(self._restart_later(org, agent_id, delay), f"restart-{agent_id}")

    async def _restart_later(self, org: Organization, agent_id: AgentId, delay: float) -> None:
        """Start the agent again after ``delay``; while the bus does not answer, a restart
        that fails is tried again (backing off to 10 s), never held against the agent; any
        other failure leaves it ``failed`` with its quota released."""
        await asyncio.sleep(delay)
        try:
            async with self._lock(agent_id):
                self._pending.discard(agent_id)  # from here the lock says it is under way
                agent = await self.agents.get(agent_id)
                if agent.state not in (AgentState.PROVISIONING, AgentState.RESUMING):
                    return
                if agent.public_key:
                    with contextlib.suppress(CorralError):
                        await self.bus.revoke_agent(org.slug, agent.id)
                await self._launcher.launch(org, agent, [])
        except CorralError as exc:
            if not await self.bus_health.check() or self.bus_health.disturbed(
                within=self.silence_limit
            ):
                log.warning("restart of %s failed on the bus (%s); trying again", agent_id, exc)
                again = min(10.0, max(0.5, 2 * delay))
                self._schedule(org, agent_id, again)
                return
            log.error("restart of %s failed: %s", agent_id, exc.message)
            with contextlib.suppress(CorralError):
                agent = await self.agents.get(agent_id)
                if agent.state in (AgentState.PROVISIONING, AgentState.RESUMING):
                    await self._fail(org, agent, detail=f"restart failed: {exc.message}")
        except Exception:
            log.exception("restart of %s failed", agent_id)

    async def _fail(self, org: Organization, agent: Agent, *, detail: str, **fields: Any) -> bool:
        """``agent`` becomes ``failed``: off the bus, all its quota released (its pod, its
        workspace and its agent slot: resuming it charges them again). False: it had moved."""
        if not await self._transition(
            agent.id, expect=[agent.state], to=AgentState.FAILED, detail=detail, **fields
        ):
            return False
        with contextlib.suppress(CorralError):
            await self.bus.revoke_agent(org.slug, agent.id)
        await self.ledger.release(
            org.id,
            charge_for(agent.resources, pod=agent.state in HOLDS_POD),
            agents=1,
            gpus=agent.resources.gpu,
        )
        self._publish(await self.agents.get(agent.id))
        self.on_capacity(org.id)
        return True


def exit_text(status: RuntimeStatus) -> str:
    """How the process ended, for a person: its code and signal, or what was wrong."""
    how = [f"code {status.exit_code}"] if status.exit_code is not None else []
    how += [v for k, v in status.detail.items() if k in ("signal", "reason")]
    return ", ".join(how) or "unknown"
