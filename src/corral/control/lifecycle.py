"""The orchestration controller: provision, pause to zero, resume, terminate, crash restarts.

Admission is the domain's; quota is charged atomically in the store before anything is
created, and every failure undoes what was done so far, in reverse, so a refused or failed
provision leaves no process, workspace, credential or quota charge behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from corral.control.background import Background
from corral.control.hub import EventHub
from corral.control.ports import BusPort
from corral.domain.admission import ContainerRequest, apply_limit_range, charge_for
from corral.domain.agents import (
    HOLDS_POD,
    MAX_SLOTS,
    Agent,
    AgentState,
    make_agent_id,
    validate_name,
)
from corral.domain.errors import Conflict, CorralError, InvalidInput, Unavailable
from corral.domain.ids import AgentId
from corral.domain.messages import ControlKind, ControlMessage
from corral.domain.tenancy import Organization
from corral.runtime.base import AgentRuntime, LaunchSpec, Phase, RuntimeStatus
from corral.store.agents import AgentRepository
from corral.store.quota import QuotaLedger

__all__ = ["DEFAULT_AGENT_COMMAND", "Controller"]

log = logging.getLogger("corral.controller")

#: Without --command an agent runs the built-in general-purpose example agent.
DEFAULT_AGENT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "corral.agents.general")
MAX_RESTARTS = 3
CREDS_TTL_SECONDS = 24 * 3600


class Controller:
    def __init__(
        self,
        *,
        agents: AgentRepository,
        ledger: QuotaLedger,
        bus: BusPort,
        runtime: AgentRuntime,
        hub: EventHub,
        org_lookup: Callable[[str], Awaitable[Organization]],
        checkpoint_deadline: float = 5.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.agents = agents
        self.ledger = ledger
        self.bus = bus
        self.runtime = runtime
        self.hub = hub
        self._org_by_id = org_lookup
        self.checkpoint_deadline = checkpoint_deadline
        self._extra_env = dict(extra_env or {})
        self._locks: dict[str, asyncio.Lock] = {}
        self._restarts = Background()
        self._ready_waiters: dict[str, list[asyncio.Future[None]]] = {}
        #: told the org id whenever quota is released (pause, terminate, failure)
        self.on_capacity: Callable[[str], None] = lambda org_id: None
        #: told every agent whose lifecycle state it records (after the record)
        self.on_change: Callable[[Agent], None] = lambda agent: None

    def _lock(self, agent_id: str) -> asyncio.Lock:
        return self._locks.setdefault(agent_id, asyncio.Lock())

    # -- provision ------------------------------------------------------------------------
    async def provision(
        self,
        org: Organization,
        *,
        name: str,
        role: str,
        request: ContainerRequest,
        command: Sequence[str] | None = None,
        slots: int = 1,
    ) -> Agent:
        """Admit, charge, register and start a new agent; it becomes ``running`` when it
        reports ready.

        Raises:
            InvalidInput: a bad name or role, or a request above its limit.
            QuotaExceeded: over the limit range, the org's quota or its agent limit.
            Conflict: an agent of that name exists.
            Unavailable: the runtime or the bus failed; nothing is left behind.
        """
        validate_name("name", name)
        validate_name("role", role)
        if not 1 <= slots <= MAX_SLOTS:
            raise InvalidInput(
                f"slots must be between 1 and {MAX_SLOTS}, got {slots}", details={"slots": slots}
            )
        agent_id = make_agent_id(org.slug, name)
        resources = apply_limit_range(request, org.plan.limit_range)
        charge = charge_for(resources)
        argv = tuple(command) if command else DEFAULT_AGENT_COMMAND
        undo: list[Callable[[], Awaitable[None]]] = []
        await self.ledger.reserve(org.id, org.plan, charge, agents=1, gpus=resources.gpu)
        undo.append(lambda: self.ledger.release(org.id, charge, agents=1, gpus=resources.gpu))
        try:
            await self.agents.create(
                agent_id=agent_id,
                org_id=org.id,
                name=name,
                role=role,
                resources=resources,
                command=argv,
                slots=slots,
            )
            undo.append(lambda: self._forget(agent_id))
            await self._launch(org, await self.agents.get(agent_id), undo)
        except BaseException:
            await self._undo(undo)
            raise
        agent = await self.agents.get(agent_id)
        self._publish(agent)
        return agent

    async def _launch(
        self, org: Organization, agent: Agent, undo: list[Callable[[], Awaitable[None]]]
    ) -> None:
        """Credentials, inbox consumer and process for ``agent``; pushes undo steps."""
        creds = self.bus.mint_agent_creds(org.slug, agent.id, ttl_seconds=CREDS_TTL_SECONDS)
        undo.append(lambda: self.bus.revoke_agent(org.slug, agent.id))
        await self.agents.update(agent.id, public_key=creds.public_key)
        await self.bus.prepare_agent(org.slug, agent.id)
        fresh = not await self.runtime.workspace_exists(org.slug, agent.id)
        spec = self._spec(org, agent, creds.creds)
        try:
            await self.runtime.start(spec)
        except CorralError:
            if fresh:
                with contextlib.suppress(CorralError):
                    await self.runtime.delete_workspace(org.slug, agent.id)
            raise
        undo.append(lambda: self.runtime.stop(org.slug, agent.id, grace=1.0))
        if fresh:
            undo.append(lambda: self.runtime.delete_workspace(org.slug, agent.id))

    def _spec(self, org: Organization, agent: Agent, creds: str) -> LaunchSpec:
        env = {
            "CORRAL_ORG": org.slug,
            "CORRAL_ORG_ID": org.id,
            "CORRAL_AGENT_ID": agent.id,
            "CORRAL_AGENT_NAME": agent.name,
            "CORRAL_ROLE": agent.role,
            "CORRAL_NATS_URL": self.bus.url,
            "CORRAL_AGENT_SLOTS": str(agent.slots),
            **self._extra_env,
        }
        return LaunchSpec(
            org=org.slug,
            org_id=org.id,
            agent_id=agent.id,
            name=agent.name,
            role=agent.role,
            resources=agent.resources,
            command=agent.command,
            env=env,
            creds=creds,
        )

    async def _forget(self, agent_id: str) -> None:
        await self.agents.delete(agent_id)

    async def _undo(self, steps: list[Callable[[], Awaitable[None]]]) -> None:
        for step in reversed(steps):
            try:
                await step()
            except Exception:  # keep undoing; the original error is what the caller sees
                log.exception("cleanup step failed")

    # -- readiness ------------------------------------------------------------------------
    async def on_ready(self, org: str, agent_id: str) -> None:
        """The agent said it is up and consuming its inbox."""
        now = datetime.now(UTC)
        agent = await self.agents.get(agent_id)
        if agent.org != org:  # the server says another org spoke: ignore, never trust
            return
        if agent.state is AgentState.RESUMING:
            await self.agents.transition(
                agent_id,
                expect=[AgentState.RESUMING],
                to=AgentState.RUNNING,
                resumed_at=now,
                last_seen_at=now,
                busy_task=None,
            )
        else:
            await self.agents.transition(
                agent_id,
                expect=[AgentState.PROVISIONING],
                to=AgentState.RUNNING,
                last_seen_at=now,
                busy_task=None,
            )
        for fut in self._ready_waiters.pop(agent_id, []):
            if not fut.done():
                fut.set_result(None)
        self._publish(await self.agents.get(agent_id))

    async def wait_running(self, agent_id: str, *, timeout: float) -> Agent:
        """Wait until the agent is running (for CLI ``--wait`` and tests)."""
        agent = await self.agents.get(agent_id)
        if agent.state is AgentState.RUNNING:
            return agent
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready_waiters.setdefault(agent_id, []).append(fut)
        agent = await self.agents.get(agent_id)
        if agent.state is not AgentState.RUNNING:
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise Unavailable(
                    f"agent {agent_id} did not report ready within {timeout:g}s "
                    f"(state {agent.state.value}; see `corral agent logs`)"
                ) from None
        return await self.agents.get(agent_id)

    # -- pause / resume -------------------------------------------------------------------
    async def pause(self, org: Organization, agent_id: str, *, force: bool = False) -> Agent:
        """Checkpoint (with a deadline), stop the process, keep the workspace, revoke the
        credentials, release the pod slot; ``paused`` with ``pausedAt``."""
        async with self._lock(agent_id):
            agent = await self.agents.get(agent_id, org_id=org.id)
            if agent.state is AgentState.PAUSED:
                return agent
            if agent.busy_task and not force:
                raise Conflict(
                    f"agent {agent_id} is busy with task {agent.busy_task}; "
                    "wait for it or pause with force",
                    details={"agent": agent_id, "task": agent.busy_task},
                )
            if not await self.agents.transition(
                agent_id, expect=[AgentState.RUNNING], to=AgentState.PAUSING
            ):
                raise Conflict(
                    f"agent {agent_id} is {agent.state.value}; only a running agent can pause",
                    details={"agent": agent_id, "state": agent.state.value},
                )
            self._publish(await self.agents.get(agent_id))
            detail = ""
            try:
                await self.bus.control(
                    org.slug,
                    agent_id,
                    ControlMessage(ControlKind.CHECKPOINT, self.checkpoint_deadline),
                    timeout=self.checkpoint_deadline,
                )
            except CorralError as exc:
                detail = f"checkpoint not confirmed: {exc.message}"
                log.warning("agent %s: %s", agent_id, detail)
            await self.runtime.stop(org.slug, agent_id, grace=self.checkpoint_deadline)
            await self.bus.revoke_agent(org.slug, agent.id)
            await self.ledger.release(org.id, charge_for(agent.resources, pvc=False))
            await self.agents.transition(
                agent_id,
                expect=[AgentState.PAUSING],
                to=AgentState.PAUSED,
                paused_at=datetime.now(UTC),
                public_key=None,
                busy_task=None,
                detail=detail,
            )
            paused = await self.agents.get(agent_id)
            self._publish(paused)
            self.on_capacity(org.id)
            return paused

    async def finish_pause(self, org: Organization, agent: Agent) -> None:
        """Complete a pause the control plane was interrupted in (the process is stopped)."""
        await self.bus.revoke_agent(org.slug, agent.id)
        await self.ledger.release(org.id, charge_for(agent.resources, pvc=False))
        await self.agents.transition(
            agent.id,
            expect=[AgentState.PAUSING],
            to=AgentState.PAUSED,
            paused_at=datetime.now(UTC),
            public_key=None,
            busy_task=None,
        )

    async def resume(self, org: Organization, agent_id: str) -> Agent:
        """Charge the pod slot again, new credentials, same workspace; ``running`` with
        ``resumedAt`` once the agent (having restored its checkpoint) reports ready.

        Raises:
            QuotaExceeded: the org has no room for the pod now; the agent stays paused.
        """
        async with self._lock(agent_id):
            agent = await self.agents.get(agent_id, org_id=org.id)
            if agent.state in (AgentState.RUNNING, AgentState.RESUMING):
                return agent
            if agent.state not in (AgentState.PAUSED, AgentState.FAILED):
                raise Conflict(
                    f"agent {agent_id} is {agent.state.value}; only a paused agent can resume",
                    details={"agent": agent_id, "state": agent.state.value},
                )
            previous = agent.state
            charge = charge_for(agent.resources, pvc=False)
            await self.ledger.reserve(org.id, org.plan, charge)
            undo: list[Callable[[], Awaitable[None]]] = [
                lambda: self.ledger.release(org.id, charge)
            ]
            await self.agents.transition(
                agent_id, expect=[previous], to=AgentState.RESUMING, restarts=0, detail=""
            )
            undo.append(lambda: self._set_state(agent_id, AgentState.RESUMING, previous))
            try:
                await self._launch(org, agent, undo)
            except BaseException:
                await self._undo(undo)
                raise
            resumed = await self.agents.get(agent_id)
            self._publish(resumed)
            return resumed

    async def _set_state(self, agent_id: str, expect: AgentState, to: AgentState) -> None:
        await self.agents.transition(agent_id, expect=[expect], to=to)

    # -- terminate ------------------------------------------------------------------------
    async def terminate(
        self, org: Organization, agent_id: str, *, delete_workspace: bool = True
    ) -> Agent:
        """Stop the agent for good and release its quota; the workspace kept or deleted."""
        async with self._lock(agent_id):
            agent = await self.agents.get(agent_id, org_id=org.id)
            if agent.state is AgentState.TERMINATED:
                return agent
            await self.runtime.stop(org.slug, agent_id, grace=2.0)
            if agent.public_key:
                with contextlib.suppress(CorralError):
                    await self.bus.revoke_agent(org.slug, agent.id)
            with contextlib.suppress(CorralError):
                await self.bus.remove_agent(org.slug, agent_id)
            holds_pod = agent.state in HOLDS_POD
            await self.ledger.release(
                org.id,
                charge_for(agent.resources, pod=holds_pod),
                agents=1,
                gpus=agent.resources.gpu,
            )
            if delete_workspace:
                await self.runtime.delete_workspace(org.slug, agent_id)
            await self.agents.transition(
                agent_id,
                expect=list(AgentState),
                to=AgentState.TERMINATED,
                terminated_at=datetime.now(UTC),
                public_key=None,
                busy_task=None,
            )
            done = await self.agents.get(agent_id)
            self._publish(done)
            self.on_capacity(org.id)
            return done

    # -- crashes --------------------------------------------------------------------------
    async def on_exit(self, status: RuntimeStatus) -> str | None:
        """A process exited without being asked. Restart with backoff, or mark ``failed``
        after repeated crashes. Returns the task it was running, for the dispatcher."""
        if status.phase is not Phase.CRASHED:
            return None
        try:
            agent = await self.agents.get(status.agent_id)
        except CorralError:
            return None
        if agent.state not in (AgentState.RUNNING, AgentState.PROVISIONING, AgentState.RESUMING):
            return None
        org = await self._org_by_id(agent.org_id)
        restarts = agent.restarts + 1
        lost_task = agent.busy_task
        if restarts > MAX_RESTARTS:
            await self.agents.transition(
                agent.id,
                expect=[agent.state],
                to=AgentState.FAILED,
                restarts=restarts,
                busy_task=None,
                detail=f"crashed {restarts} times (last exit {status.exit_code})",
            )
            await self.ledger.release(org.id, charge_for(agent.resources, pvc=False))
            if agent.public_key:
                with contextlib.suppress(CorralError):
                    await self.bus.revoke_agent(org.slug, agent.id)
            self._publish(await self.agents.get(agent.id))
            self.on_capacity(org.id)
            return lost_task
        await self.agents.transition(
            agent.id,
            expect=[agent.state],
            to=AgentState.PROVISIONING,
            restarts=restarts,
            busy_task=None,
            detail=f"restarting after exit {status.exit_code} ({restarts}/{MAX_RESTARTS})",
        )
        self._publish(await self.agents.get(agent.id))
        delay = min(10.0, 0.2 * 2 ** (restarts - 1))
        self._restarts.spawn(self._restart_later(org, agent.id, delay), f"restart-{agent.id}")
        return lost_task

    async def _restart_later(self, org: Organization, agent_id: AgentId, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            async with self._lock(agent_id):
                agent = await self.agents.get(agent_id)
                if agent.state is not AgentState.PROVISIONING:
                    return
                if agent.public_key:
                    with contextlib.suppress(CorralError):
                        await self.bus.revoke_agent(org.slug, agent.id)
                await self._launch(org, agent, [])
        except CorralError as exc:
            log.error("restart of %s failed: %s", agent_id, exc.message)
            await self.agents.transition(
                agent_id,
                expect=[AgentState.PROVISIONING],
                to=AgentState.FAILED,
                detail=f"restart failed: {exc.message}",
            )
        except Exception:
            log.exception("restart of %s failed", agent_id)

    async def restart_now(self, org: Organization, agent: Agent) -> None:
        """Used by the reconciler: start an agent that should be running but is not."""
        async with self._lock(agent.id):
            await self.runtime.stop(org.slug, agent.id, grace=0.5)
            if agent.public_key:
                with contextlib.suppress(CorralError):
                    await self.bus.revoke_agent(org.slug, agent.id)
            target = (
                AgentState.RESUMING
                if agent.state is AgentState.RESUMING
                else AgentState.PROVISIONING
            )
            await self.agents.transition(agent.id, expect=[agent.state], to=target, busy_task=None)
            await self._launch(org, await self.agents.get(agent.id), [])

    async def close(self) -> None:
        await self._restarts.close()

    def _publish(self, agent: Agent) -> None:
        self.on_change(agent)
        data: dict[str, Any] = {"agent": agent.to_wire()}
        self.hub.publish(agent.org, "agent", data)
