"""The orchestration controller: provision, pause to zero, resume, terminate, crash restarts.

Admission is the domain's; quota is charged atomically in the store before anything is
created, and every failure undoes what was done so far, in reverse, so a refused or failed
provision leaves no process, workspace, credential or quota charge behind.

Everything that happens to an agent's lifecycle comes here: it reports ready, it is heard from,
it exits (a crash, or an exit with code 0 nobody asked for), it stops heartbeating. Crashes
and restarts are :mod:`corral.control.restarts`' (after :data:`MAX_RESTARTS` restarts in a row
the agent is ``failed``). Every state change is held to the domain's agent state machine
(:mod:`corral.control.records`). When an agent stops running the work it was given, the
controller tells the dispatcher once, through ``on_lost``; which task an agent is busy with is
the dispatcher's knowledge, asked through ``current_task``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from corral.control.background import Background
from corral.control.bus_health import BusHealth
from corral.control.hub import EventHub
from corral.control.launching import DEFAULT_AGENT_COMMAND, AgentEnv, Launcher, Undo, undo
from corral.control.ports import BusPort
from corral.control.restarts import MAX_RESTARTS, Restarts
from corral.domain.admission import ContainerRequest, apply_limit_range, charge_for
from corral.domain.agents import (
    HOLDS_POD,
    MAX_SLOTS,
    Agent,
    AgentState,
    make_agent_id,
    require_transition,
    validate_name,
)
from corral.domain.errors import Conflict, CorralError, InvalidInput, NotFound
from corral.domain.messages import ControlKind, ControlMessage
from corral.domain.tenancy import Organization
from corral.runtime.base import AgentRuntime
from corral.store.agents import AgentRepository
from corral.store.quota import QuotaLedger

__all__ = ["DEFAULT_AGENT_COMMAND", "MAX_RESTARTS", "Controller"]

log = logging.getLogger("corral.controller")


class Controller(Restarts):
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
        heartbeat_seconds: float = 5.0,
        agent_env: AgentEnv | None = None,
        before_launch: Callable[[Organization], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(agents=agents, hub=hub, runtime=runtime)
        self.ledger = ledger
        self.bus = bus
        self._org_by_id = org_lookup
        self.checkpoint_deadline = checkpoint_deadline
        self.heartbeat_seconds = heartbeat_seconds
        self._launcher = Launcher(
            agents=agents,
            bus=bus,
            runtime=runtime,
            extra_env=extra_env,
            agent_env=agent_env,
            before_launch=before_launch,
        )
        self._restarts = Background()
        self._last_seen: dict[str, float] = {}
        self._heard: dict[str, datetime] = {}  # heard from since the last record_heard
        self._recording: asyncio.Task[None] | None = None  # the latest record_heard_soon
        self._steady: set[str] = set()  # agents whose crash count is known to be 0
        self._pending: set[str] = set()  # agents whose restart is scheduled
        #: whether the bus answers (the platform gives it a probe); its outages are nobody's
        #: crash
        self.bus_health = BusHealth()
        #: an agent silent this long is hung; a bus outage this recent explains an exit
        self.silence_limit = max(10.0, 5 * heartbeat_seconds)

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
        env: Mapping[str, str] | None = None,
        role_version: int | None = None,
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
        steps: Undo = []
        await self.ledger.reserve(org.id, org.plan, charge, agents=1, gpus=resources.gpu)
        steps.append(lambda: self.ledger.release(org.id, charge, agents=1, gpus=resources.gpu))
        try:
            async with self._lock(agent_id):  # the reconciler leaves a start under way alone
                # recorded with the agent; never handed to anyone if the agent is not created
                creds = self._launcher.mint(org, agent_id)
                created = await self.agents.create(
                    agent_id=agent_id,
                    org_id=org.id,
                    org=org.slug,
                    name=name,
                    role=role,
                    resources=resources,
                    command=argv,
                    slots=slots,
                    env=env,
                    role_version=role_version,
                    public_key=creds.public_key,
                )
                steps.append(lambda: self.agents.delete(agent_id))
                steps.append(lambda: self.bus.revoke_agent(org.slug, agent_id))
                await self._launcher.launch(org, created, steps, creds=creds)
        except BaseException:
            await undo(steps)
            raise
        agent = await self.agents.get(agent_id)
        self._publish(agent)
        return agent

    # -- readiness and heartbeats ---------------------------------------------------------
    async def on_ready(self, org: str, agent_id: str) -> Agent | None:
        """The agent said it is up and consuming its inbox; returns it, or None if no such
        agent of ``org`` exists (the server says another org spoke: ignored, never trusted).
        Records that it was heard from (:meth:`heard_from`), in the same write as its state
        where it moves to running."""
        now = datetime.now(UTC)
        for edge in (AgentState.PROVISIONING, AgentState.RESUMING):
            require_transition(agent_id, edge, AgentState.RUNNING)
        # the usual case, in one write: it was starting, and is running from now
        ready = await self.agents.to_running(agent_id, org=org, at=now)
        if ready is not None:  # that wrote when it was last heard from: no second write
            self._last_seen[agent_id] = time.monotonic()
            if ready.restarts == 0:  # its first completed task has no crash count to reset
                self._steady.add(agent_id)
        else:  # it said so again, or it is in no state to start; or not ``org``'s
            try:
                agent = await self.agents.get(agent_id)
            except NotFound:
                return None
            if agent.org != org:
                return None
            self.heard_from(agent_id)
            await self.record_heard()
            ready = await self.agents.get(agent_id)
        self._ready(agent_id, ready)
        self._publish(ready)
        return ready

    def heard_from(self, agent_id: str) -> None:
        """Note that the agent spoke; :meth:`record_heard` writes it to the store (at most
        once per heartbeat interval per agent)."""
        now = time.monotonic()
        if now - self._last_seen.get(agent_id, 0.0) < self.heartbeat_seconds:
            self._last_seen.setdefault(agent_id, now)
            return
        self._last_seen[agent_id] = now
        self._heard[agent_id] = datetime.now(UTC)

    def record_heard_soon(self) -> None:
        """Start :meth:`record_heard` in the background, unless one is under way (what is
        noted meanwhile waits for the next call): the reader of agents' events goes on to
        the next batch instead of waiting its turn for the store."""
        if not self._heard or (self._recording is not None and not self._recording.done()):
            return
        self._recording = self._restarts.spawn(self.record_heard(), "record-heard")

    async def record_heard(self) -> None:
        """Write when the agents noted by :meth:`heard_from` were heard, all in one statement:
        a write per agent, each waiting its turn for the store, held up the reading of every
        org's events once hundreds of agents spoke. What fails to be written is kept for the
        next call (a newer note of the same agent wins)."""
        if not self._heard:
            return
        heard, self._heard = self._heard, {}
        try:
            await self.agents.seen(heard)
        except CorralError as exc:
            log.warning(
                "when %d agents were last heard from was not recorded: %s", len(heard), exc.message
            )
            self._heard = {**heard, **self._heard}

    # -- pause / resume -------------------------------------------------------------------
    async def pause(self, org: Organization, agent_id: str, *, force: bool = False) -> Agent:
        """Checkpoint (with a deadline), stop the process, keep the workspace, revoke the
        credentials, release the pod slot; ``paused`` with ``pausedAt``. Work it held is
        retried elsewhere."""
        async with self._lock(agent_id):
            agent = await self.agents.get(agent_id, org_id=org.id)
            if agent.state is AgentState.PAUSED:
                return agent
            busy = self.current_task(agent_id)
            if busy and not force:
                raise Conflict(
                    f"agent {agent_id} is busy with task {busy}; wait for it or pause with force",
                    details={"agent": agent_id, "task": busy},
                )
            if not await self._transition(
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
            await self._transition(
                agent_id,
                expect=[AgentState.PAUSING],
                to=AgentState.PAUSED,
                paused_at=datetime.now(UTC),
                public_key=None,
                detail=detail,
            )
            paused = await self.agents.get(agent_id)
            self._publish(paused)  # at once: placement may wake it from now on
            await self.on_lost(agent_id, f"agent {agent_id} was paused")
            self.on_capacity(org.id)
            return paused

    async def finish_stalled_pause(self, org: Organization, agent_id: str) -> None:
        """Used by the reconciler: finish a pause left ``pausing`` with no process (finishing
        it after a restart failed while the bus did not answer, say)."""
        async with self._lock(agent_id):
            agent = await self.agents.get(agent_id, org_id=org.id)
            if agent.state is AgentState.PAUSING:
                await self.runtime.stop(org.slug, agent_id, grace=0.5)
                await self.finish_pause(org, agent)

    async def finish_pause(self, org: Organization, agent: Agent) -> None:
        """Complete a pause the control plane was interrupted in (the process is stopped)."""
        await self.bus.revoke_agent(org.slug, agent.id)
        await self.ledger.release(org.id, charge_for(agent.resources, pvc=False))
        await self._transition(
            agent.id,
            expect=[AgentState.PAUSING],
            to=AgentState.PAUSED,
            paused_at=datetime.now(UTC),
            public_key=None,
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
            # a paused agent holds its workspace and agent slot; a failed one holds nothing
            whole = previous is AgentState.FAILED
            charge = charge_for(agent.resources, pvc=whole)
            agents, gpus = (1, agent.resources.gpu) if whole else (0, 0)
            await self.ledger.reserve(org.id, org.plan, charge, agents=agents, gpus=gpus)
            steps: Undo = [lambda: self.ledger.release(org.id, charge, agents=agents, gpus=gpus)]
            # its new credentials go in the same write as its state, as a provision's do
            creds = self._launcher.mint(org, agent_id)
            try:
                resuming = await self._move(
                    org.slug,
                    agent_id,
                    expect=[previous],
                    to=AgentState.RESUMING,
                    restarts=0,
                    detail="",
                    public_key=creds.public_key,
                )
                if resuming is None:  # under its lock nothing else moves it; but if it did
                    raise Conflict(
                        f"agent {agent_id} changed state while it was being resumed",
                        details={"agent": agent_id},
                    )
                self._publish(resuming)  # placement waits for it from now
                steps.append(lambda: self._set_state(agent_id, AgentState.RESUMING, previous))
                steps.append(lambda: self.bus.revoke_agent(org.slug, agent_id))
                await self._launcher.launch(org, resuming, steps, creds=creds)
            except BaseException:
                await undo(steps)
                raise
            return resuming

    async def _set_state(self, agent_id: str, expect: AgentState, to: AgentState) -> None:
        await self._transition(agent_id, expect=[expect], to=to)

    # -- terminate ------------------------------------------------------------------------
    async def terminate(
        self, org: Organization, agent_id: str, *, delete_workspace: bool = True
    ) -> Agent:
        """Stop the agent for good and release its quota; the workspace kept or deleted.
        Work it held is retried elsewhere before this returns."""
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
            if agent.state is not AgentState.FAILED:  # a failed one released it all
                holds_pod = agent.state in HOLDS_POD
                await self.ledger.release(
                    org.id,
                    charge_for(agent.resources, pod=holds_pod),
                    agents=1,
                    gpus=agent.resources.gpu,
                )
            if delete_workspace:
                await self.runtime.delete_workspace(org.slug, agent_id)
            await self._transition(
                agent_id,
                expect=[s for s in AgentState if s is not AgentState.TERMINATED],
                to=AgentState.TERMINATED,
                terminated_at=datetime.now(UTC),
                public_key=None,
            )
            await self.on_lost(agent_id, f"agent {agent_id} was terminated")
            done = await self.agents.get(agent_id)
            self._publish(done)
            self.on_capacity(org.id)
        self._forget(agent_id)
        return done

    def _forget(self, agent_id: str) -> None:
        """Drop what is kept in memory of a terminated agent (its lock only if nobody holds
        it): agents come and go for as long as the platform runs."""
        self._last_seen.pop(agent_id, None)
        self._heard.pop(agent_id, None)
        self._steady.discard(agent_id)
        lock = self._locks.get(agent_id)
        if lock is not None and not lock.locked():
            del self._locks[agent_id]

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
            await self._transition(agent.id, expect=[agent.state], to=target)
            await self._launcher.launch(org, await self.agents.get(agent.id), [])

    async def take_off(self, org: Organization, agent_id: str, *, reason: str) -> bool:
        """Stop an agent that broke a platform rule (its org's bus ingress budget, say): it is
        ``failed`` with ``reason``, not restarted; its work is retried. False: it was not live."""
        async with self._lock(agent_id):
            agent = await self.agents.get(agent_id, org_id=org.id)
            live = (AgentState.RUNNING, AgentState.PROVISIONING, AgentState.RESUMING)
            if agent.state not in live or not await self._fail(org, agent, detail=reason):
                return False
            await self.runtime.stop(org.slug, agent_id, grace=0.5)
        await self.on_lost(agent_id, f"agent {agent_id} was {reason}")
        return True

    async def close(self) -> None:
        await self._restarts.close()
