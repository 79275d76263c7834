"""The dispatcher: durable tasks in the store, the pure scheduler in memory, delivery over the
bus, and the agent events that move tasks along.

The store is the truth: the queue is rebuilt from it on start, every transition is a
compare-and-set with a history row, and an event delivered twice is recorded once. The loop
never waits on an agent — it reacts to events, so tasks may run for hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from corral.control.background import Background
from corral.control.hub import EventHub
from corral.control.lifecycle import Controller
from corral.control.ports import BusEvent, BusPort
from corral.domain.admission import ContainerRequest, apply_limit_range, charge_for, check_quota
from corral.domain.agents import Agent, AgentState
from corral.domain.errors import Conflict, CorralError, InvalidInput, NotFound, QuotaExceeded
from corral.domain.ids import AgentId, OrgId, TaskId
from corral.domain.messages import MessageType, StatusKind, StatusMessage, TaskMessage
from corral.domain.quantities import parse
from corral.domain.tasks import Priority, Requirements, TaskState
from corral.domain.tenancy import Organization
from corral.runtime.base import Phase, RuntimeStatus
from corral.scheduling.placement import (
    Action,
    AgentAvailability,
    AgentView,
    Placement,
    place,
    wait,
)
from corral.scheduling.scheduler import QueuedTask, Scheduler
from corral.store.quota import QuotaLedger, UsageSnapshot
from corral.store.tasks import TaskRecord, TaskRepository
from corral.store.tenants import OrgRepository

__all__ = ["Dispatcher", "new_task_id"]

log = logging.getLogger("corral.dispatcher")

MAX_ATTEMPTS = 5
MAX_INCOMING_PER_ROLE = 2  # agents being provisioned/resumed at once for one (org, role)
ACTIVE = (TaskState.DISPATCHED, TaskState.RUNNING)


def new_task_id() -> str:
    return f"task_{secrets.token_hex(8)}"


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def requirements_of(rec: TaskRecord) -> Requirements:
    r = rec.requirements
    return Requirements(
        cpu=parse(r["cpu"]) if r.get("cpu") else None,
        memory=parse(r["memory"]) if r.get("memory") else None,
        gpu=int(r.get("gpu", 0)),
    )


class Dispatcher:
    def __init__(
        self,
        *,
        tasks: TaskRepository,
        orgs: OrgRepository,
        ledger: QuotaLedger,
        controller: Controller,
        bus: BusPort,
        hub: EventHub,
        auto_provision: bool = True,
        idle_timeout: Callable[[Organization], float] = lambda org: org.plan.idle_timeout_seconds,
        aging_seconds: float = 300.0,
        heartbeat_seconds: float = 5.0,
    ) -> None:
        self.tasks = tasks
        self.orgs = orgs
        self.ledger = ledger
        self.controller = controller
        self.bus = bus
        self.hub = hub
        self.auto_provision = auto_provision
        self.idle_timeout = idle_timeout
        self.scheduler = Scheduler(aging_seconds=aging_seconds)
        self._wake = asyncio.Event()
        self._delayed: list[tuple[float, QueuedTask]] = []  # retries waiting for their backoff
        self._incoming: dict[tuple[str, str | None], int] = defaultdict(int)
        self._orgs_by_id: dict[str, Organization] = {}
        self._background = Background()
        self.dispatch_latency: list[float] = []  # seconds queued→dispatched, for metrics
        self.held = False  # while held, tasks are accepted and queued but none is dispatched
        # orgs whose capacity changed since the last round: events arrive while a round runs
        # on an older snapshot, so parked lanes are woken at the start of the next round too
        self._changed: set[str] = set()
        self.heartbeat_seconds = heartbeat_seconds
        self._last_seen: dict[str, float] = {}
        self._silenced: set[str] = set()  # being restarted for a lost heartbeat
        self._last_reap = 0.0

    # -- start ----------------------------------------------------------------------------
    async def rebuild(self) -> None:
        """Load every org and queued task from the store; requeue work whose agent is gone."""
        for org in await self.orgs.list():
            self._register(org)
        for rec in await self.tasks.find(states=[TaskState.QUEUED], limit=10_000_000):
            self._enqueue(rec)
        for rec in await self.tasks.find(states=list(ACTIVE), limit=10_000_000):
            if rec.org_id in self._orgs_by_id:
                self.scheduler.on_started(OrgId(rec.org_id))

    def _register(self, org: Organization) -> None:
        self._orgs_by_id[org.id] = org
        self.scheduler.set_org(
            OrgId(org.id), weight=org.plan.fair_share_weight, plan_boost=org.plan.plan_boost
        )

    def org_changed(self, org: Organization) -> None:
        self._register(org)
        self.kick()

    def org_removed(self, org: Organization) -> None:
        self.scheduler.drop_org(OrgId(org.id))
        self._orgs_by_id.pop(org.id, None)

    def kick(self) -> None:
        self._wake.set()

    def capacity_changed(self, org_id: str) -> None:
        """An agent of ``org_id`` became free or ready, or its quota was released."""
        self._changed.add(org_id)
        if org_id in self._orgs_by_id:
            self.scheduler.wake(OrgId(org_id))
        self.kick()

    def _enqueue(self, rec: TaskRecord, *, not_before: float | None = None) -> None:
        if rec.org_id not in self._orgs_by_id or TaskId(rec.id) in self.scheduler:
            return
        q = QueuedTask(
            id=TaskId(rec.id),
            org=OrgId(rec.org_id),
            priority=rec.priority,
            enqueued_at=rec.created_at.timestamp(),
            deadline=_ts(rec.deadline),
            role=rec.role,
            requirements=requirements_of(rec),
            agent_id=AgentId(rec.target_agent) if rec.target_agent else None,
        )
        if not_before is not None and not_before > time.time():
            self._delayed.append((not_before, q))
        else:
            self.scheduler.enqueue(q)

    # -- submit / cancel ------------------------------------------------------------------
    async def submit(
        self,
        org: Organization,
        *,
        role: str | None,
        agent: str | None,
        priority: Priority,
        deadline: datetime | None,
        requirements: Requirements,
        payload: dict[str, Any],
        parent_id: str | None = None,
        from_agent: str | None = None,
        task_id: str | None = None,
    ) -> TaskRecord:
        """Accept a task durably (``queued``), then let the loop place it.

        Raises:
            InvalidInput: neither or both of role/agent, an unknown agent, or a past deadline.
        """
        if (role is None) == (agent is None):
            raise InvalidInput("give exactly one of 'role' or 'agent'")
        if agent is not None:
            try:
                target = await self.controller.agents.get(agent, org_id=org.id)
            except NotFound:
                raise InvalidInput(
                    f"unknown agent {agent!r} in organization {org.slug!r}",
                    details={"agent": agent},
                ) from None
            if target.state in (AgentState.TERMINATED, AgentState.FAILED):
                raise InvalidInput(f"agent {agent!r} is {target.state.value}")
        if deadline is not None and deadline <= datetime.now(UTC):
            raise InvalidInput("the deadline is already past", details={"deadline": str(deadline)})
        reqs: dict[str, Any] = {"gpu": requirements.gpu}
        if requirements.cpu is not None:
            reqs["cpu"] = requirements.cpu.render()
        if requirements.memory is not None:
            reqs["memory"] = requirements.memory.render()
        rec = await self.tasks.create(
            task_id=task_id or new_task_id(),
            org_id=org.id,
            role=role,
            target_agent=agent,
            priority=priority,
            deadline=deadline,
            requirements=reqs,
            payload=payload,
            parent_id=parent_id,
            from_agent=from_agent,
        )
        if org.id not in self._orgs_by_id:
            self._register(org)
        self._enqueue(rec)
        self._publish(rec)
        self.kick()
        return rec

    async def cancel(self, org: Organization, task_id: str) -> TaskRecord:
        rec = await self.tasks.get(task_id, org_id=org.id)
        if rec.state.is_terminal:
            raise Conflict(
                f"task {task_id} is already {rec.state.value}",
                details={"task": task_id, "state": rec.state.value},
            )
        moved = await self.tasks.transition(
            task_id, expect=[rec.state], to=TaskState.CANCELLED, detail="cancelled by user"
        )
        if not moved:
            return await self.cancel(org, task_id)
        self.scheduler.remove(TaskId(task_id))
        self._delayed = [(t, q) for t, q in self._delayed if q.id != task_id]
        if rec.state in ACTIVE:
            self.scheduler.on_finished(OrgId(org.id))
        done = await self.tasks.get(task_id)
        self._publish(done)
        self.kick()
        return done

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that
            # arrives as the event is set, and the loop would then never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch round failed")

    def hold(self) -> None:
        """Stop dispatching (tasks are still accepted, queued, expired and cancelled)."""
        self.held = True

    def release(self) -> None:
        self.held = False
        self.kick()

    async def round(self) -> None:
        now = time.time()
        changed, self._changed = self._changed, set()
        for org_id in changed:
            if org_id in self._orgs_by_id:
                self.scheduler.wake(OrgId(org_id))
        if self._delayed:
            due = [q for t, q in self._delayed if t <= now]
            self._delayed = [(t, q) for t, q in self._delayed if t > now]
            for q in due:
                if q.id not in self.scheduler:
                    self.scheduler.enqueue(q)
        for q in self.scheduler.expire(now):
            if await self.tasks.transition(
                q.id, expect=[TaskState.QUEUED], to=TaskState.EXPIRED, detail="deadline passed"
            ):
                self._publish(await self.tasks.get(q.id))
        if time.monotonic() - self._last_reap >= 1.0:  # not on every round: rounds follow events
            self._last_reap = time.monotonic()
            await self._reap_idle()
            await self._reap_silent()
        if len(self.scheduler) == 0 or self.held:
            return
        views = await self._views()
        usage = await self.ledger.all_usage()
        decisions = 0
        while decisions < 1000:
            decision = self.scheduler.pop_next(now, lambda t: self._place(t, views, usage))
            if decision is None:
                break
            decisions += 1
            await self._act(decision.task, decision.placement, views)

    async def _views(self) -> dict[str, list[AgentView]]:
        views: dict[str, list[AgentView]] = defaultdict(list)
        live = [s for s in AgentState if s not in (AgentState.TERMINATED,)]
        for a in await self.controller.agents.find(states=live):
            views[a.org_id].append(_view(a))
        return views

    def _place(
        self, task: QueuedTask, views: dict[str, list[AgentView]], usage: dict[str, UsageSnapshot]
    ) -> Placement:
        org = self._orgs_by_id[task.org]

        def may_provision() -> bool:
            if not self.auto_provision or task.role is None:
                return False
            if self._incoming[(org.id, task.role)] >= MAX_INCOMING_PER_ROLE:
                return False
            snap = usage.get(org.id)
            if snap is None:
                return False
            try:
                res = apply_limit_range(_request_for(task.requirements), org.plan.limit_range)
                check_quota(
                    org.plan,
                    snap.used,
                    charge_for(res),
                    agents_used=snap.agents,
                    new_agents=1,
                    gpus_used=snap.gpus,
                    new_gpus=res.gpu,
                )
            except (QuotaExceeded, InvalidInput):
                return False
            return True

        placement = place(task, views.get(org.id, []), may_provision=may_provision)
        if placement.action is Action.WAIT and self._incoming[(org.id, task.role)]:
            return wait(f"waiting for a {task.role!r} agent that is starting")
        return placement

    async def _act(
        self, task: QueuedTask, placement: Placement, views: dict[str, list[AgentView]]
    ) -> None:
        org = self._orgs_by_id[task.org]
        if placement.action is Action.USE and placement.agent_id is not None:
            _mark(views, org.id, placement.agent_id, AgentAvailability.BUSY)
            await self._dispatch(org, task, placement.agent_id)
            return
        # WAKE or PROVISION: the task goes back to the queue until the agent is ready
        self.scheduler.put_back(task)
        key = (org.id, task.role)
        self._incoming[key] += 1
        if placement.action is Action.WAKE and placement.agent_id is not None:
            _mark(views, org.id, placement.agent_id, AgentAvailability.UNAVAILABLE)
            self._background.spawn(
                self._wake_agent(org, placement.agent_id, key), f"wake-{placement.agent_id}"
            )
        else:
            self._background.spawn(self._provision_for(org, task, key), f"provision-{org.slug}")
        # the placement is re-asked when the agent reports ready (scheduler.wake)

    async def _dispatch(self, org: Organization, task: QueuedTask, agent_id: AgentId) -> None:
        agents = self.controller.agents
        if not await agents.claim(agent_id, task.id):
            self.scheduler.put_back(task)
            return
        rec = await self.tasks.get(task.id)
        moved = await self.tasks.transition(
            task.id,
            expect=[TaskState.QUEUED],
            to=TaskState.DISPATCHED,
            detail=f"to {agent_id}",
            agent_id=agent_id,
            attempts=rec.attempts + 1,
        )
        if not moved:  # cancelled meanwhile
            await agents.release(agent_id, task.id)
            self.scheduler.on_finished(task.org)
            return
        message = TaskMessage(
            task.id,
            rec.from_agent or "platform",
            agent_id,
            MessageType.DELEGATE,
            rec.payload,
            rec.attempts + 1,
        )
        try:
            await self.bus.deliver(org.slug, agent_id, message)
        except CorralError as exc:
            log.warning("delivery of %s to %s failed: %s", task.id, agent_id, exc.message)
            await agents.release(agent_id, task.id)
            await self._retry(task.id, f"delivery failed: {exc.message}")
            return
        self.dispatch_latency.append(time.time() - rec.created_at.timestamp())
        self._publish(await self.tasks.get(task.id))

    async def _provision_for(
        self, org: Organization, task: QueuedTask, key: tuple[str, str | None]
    ) -> None:
        role = task.role or "general"
        try:
            agent = await self.controller.provision(
                org,
                name=f"{role[:20]}-{secrets.token_hex(2)}",
                role=role,
                request=_request_for(task.requirements),
            )
            log.info("provisioned %s for queued %s work", agent.id, role)
        except CorralError as exc:
            log.warning("could not provision a %s agent for %s: %s", role, org.slug, exc.message)
            self._incoming[key] -= 1
            self.capacity_changed(org.id)
            self.kick()

    async def _wake_agent(
        self, org: Organization, agent_id: AgentId, key: tuple[str, str | None]
    ) -> None:
        try:
            await self.controller.resume(org, agent_id)
        except CorralError as exc:
            log.warning("could not resume %s: %s", agent_id, exc.message)
            self._incoming[key] -= 1
            self.capacity_changed(org.id)
            self.kick()

    async def _retry(self, task_id: str, why: str) -> None:
        rec = await self.tasks.get(task_id)
        if rec.state not in ACTIVE:
            return
        if rec.attempts >= MAX_ATTEMPTS:
            moved = await self.tasks.transition(
                task_id, expect=list(ACTIVE), to=TaskState.FAILED, detail=f"{why}; gave up"
            )
        else:
            backoff = min(30.0, 0.25 * 2 ** (rec.attempts - 1))
            moved = await self.tasks.transition(
                task_id,
                expect=list(ACTIVE),
                to=TaskState.QUEUED,
                detail=f"{why}; retry in {backoff:.2f}s",
                agent_id=None,
                progress=None,
                not_before=datetime.now(UTC) + timedelta(seconds=backoff),
            )
            if moved:
                self._enqueue(await self.tasks.get(task_id), not_before=time.time() + backoff)
        if moved:
            self.scheduler.on_finished(OrgId(rec.org_id))
            self._publish(await self.tasks.get(task_id))
            await self._notify_parent(await self.tasks.get(task_id))
        self.kick()

    async def _seen(self, agent_id: str) -> None:
        """Record that the agent spoke (at most once per heartbeat interval in the store)."""
        now = time.monotonic()
        if now - self._last_seen.get(agent_id, 0.0) < self.heartbeat_seconds:
            self._last_seen.setdefault(agent_id, now)
            return
        self._last_seen[agent_id] = now
        await self.controller.agents.update(agent_id, last_seen_at=datetime.now(UTC))

    async def _reap_silent(self) -> None:
        """A running agent that stopped heartbeating is hung or cut off: restart it and
        retry its work, as after a crash."""
        limit = max(10.0, 5 * self.heartbeat_seconds)
        now = datetime.now(UTC)
        for agent in await self.controller.agents.find(states=[AgentState.RUNNING]):
            seen = agent.last_seen_at or agent.resumed_at or agent.created_at
            if (now - seen).total_seconds() < limit:
                continue
            org = self._orgs_by_id.get(agent.org_id)
            if org is None or agent.id in self._silenced:
                continue
            self._silenced.add(agent.id)
            log.warning("%s sent no heartbeat for %.0fs: restarting it", agent.id, limit)
            self._background.spawn(self._restart_silent(org, agent), f"silent-{agent.id}")

    async def _restart_silent(self, org: Organization, agent: Agent) -> None:
        with contextlib.suppress(CorralError):
            await self.controller.runtime.stop(org.slug, agent.id, grace=1.0)
            await self.controller.on_exit(
                RuntimeStatus(
                    org.slug, agent.id, Phase.CRASHED, detail={"reason": "heartbeat lost"}
                )
            )
        await self.on_agent_lost(agent.id)

    async def _reap_idle(self) -> None:
        now = datetime.now(UTC)
        running = await self.controller.agents.find(states=[AgentState.RUNNING])
        for agent in running:
            if agent.busy_task is not None:
                continue
            org = self._orgs_by_id.get(agent.org_id)
            if org is None:
                continue
            last = max(agent.updated_at, agent.resumed_at or agent.created_at)
            if (now - last).total_seconds() >= self.idle_timeout(org):
                log.info("pausing %s after %ss idle", agent.id, self.idle_timeout(org))
                self._background.spawn(self._pause_idle(org, agent.id), f"idle-pause-{agent.id}")

    async def _pause_idle(self, org: Organization, agent_id: str) -> None:
        with contextlib.suppress(CorralError):
            await self.controller.pause(org, agent_id)

    # -- events from agents ---------------------------------------------------------------
    async def consume(self) -> None:
        async for event in self.bus.events():
            try:
                await self.handle(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event from %s/%s failed", event.org, event.agent_id)
            finally:
                with contextlib.suppress(Exception):
                    await event.ack()

    async def handle(self, event: BusEvent) -> None:
        if not event.agent_vouched:
            return  # platform.agents.status: informational, the agent is the payload's claim
        if isinstance(event.message, StatusMessage):
            await self._on_status(event, event.message)
        elif isinstance(event.message, TaskMessage):
            await self._on_task_message(event.org, event.agent_id, event.message)

    async def _on_status(self, event: BusEvent, status: StatusMessage) -> None:
        agent_id = event.agent_id
        kind = status.status
        await self._seen(agent_id)
        if kind is StatusKind.READY:
            try:
                agent = await self.controller.agents.get(agent_id)
            except NotFound:
                return
            if agent.org != event.org:
                return
            await self.controller.on_ready(event.org, agent_id)
            key = (agent.org_id, agent.role)
            if self._incoming.get(key):
                self._incoming[key] -= 1
            self.capacity_changed(agent.org_id)
            self.kick()
            return
        if status.current_task is None:
            return
        rec = await self._owned_task(event.org, status.current_task)
        if rec is None or rec.agent_id != agent_id:
            return
        if kind is StatusKind.ACCEPTED:
            if await self.tasks.transition(
                rec.id, expect=[TaskState.DISPATCHED], to=TaskState.RUNNING, progress=0.0
            ):
                self._publish(await self.tasks.get(rec.id))
        elif kind is StatusKind.WORKING and status.progress is not None:
            await self.tasks.set_progress(rec.id, status.progress)
            self.hub.publish(
                event.org,
                "progress",
                {"task": rec.id, "progress": status.progress, **status.detail},
            )

    async def _owned_task(self, org_slug: str, task_id: str) -> TaskRecord | None:
        try:
            rec = await self.tasks.get(task_id)
        except NotFound:
            return None
        return rec if rec.org == org_slug else None

    async def _on_task_message(self, org_slug: str, agent_id: str, msg: TaskMessage) -> None:
        if msg.type is MessageType.DELEGATE:
            await self._on_delegate(org_slug, agent_id, msg)
            return
        rec = await self._owned_task(org_slug, msg.task_id)
        if rec is None or rec.agent_id != agent_id:
            return  # not this agent's task (late event of an older attempt, or forged)
        outcome = TaskState.COMPLETED if msg.type is MessageType.COMPLETE else TaskState.BLOCKED
        if rec.state is TaskState.DISPATCHED:
            await self.tasks.transition(rec.id, expect=[TaskState.DISPATCHED], to=TaskState.RUNNING)
        moved = await self.tasks.transition(
            rec.id,
            expect=[TaskState.RUNNING],
            to=outcome,
            detail=str(msg.payload.get("reason", "")) if outcome is TaskState.BLOCKED else "",
            result=msg.payload,
            progress=1.0 if outcome is TaskState.COMPLETED else rec.progress,
        )
        if not moved:
            return  # a duplicate: recorded once
        await self.controller.agents.release(agent_id, rec.id)
        self.scheduler.on_finished(OrgId(rec.org_id))
        self.capacity_changed(rec.org_id)
        done = await self.tasks.get(rec.id)
        self._publish(done)
        await self._notify_parent(done)
        self.kick()

    async def _notify_parent(self, child: TaskRecord) -> None:
        """Deliver a finished child's result to the agent that delegated it."""
        if child.parent_id is None or child.from_agent is None:
            return
        if child.state is TaskState.COMPLETED:
            kind, payload = MessageType.COMPLETE, child.result or {}
        elif child.state.is_terminal:
            reason = (child.result or {}).get("reason") or f"delegated task {child.state.value}"
            kind, payload = MessageType.BLOCKED, {"reason": reason}
        else:
            return
        message = TaskMessage(
            child.id, child.agent_id or "platform", child.from_agent, kind, payload
        )
        try:
            await self.bus.deliver(child.org, child.from_agent, message)
        except CorralError as exc:
            log.warning("could not return %s to %s: %s", child.id, child.from_agent, exc.message)

    async def _on_delegate(self, org_slug: str, agent_id: str, msg: TaskMessage) -> None:
        """An agent asks for a child task; the org is the one the server stamped."""
        try:
            org = await self.orgs.get(org_slug)
            sender = await self.controller.agents.get(agent_id, org_id=org.id)
        except NotFound:
            return
        body = msg.payload
        inner = body.get("payload", {})
        target = msg.to_agent
        role = target.removeprefix("role:") if target.startswith("role:") else None
        agent = None if role is not None else target
        try:
            if not isinstance(inner, dict):
                raise InvalidInput("delegated payload must be an object")
            if not msg.task_id.startswith("task_") or len(msg.task_id) > 64:
                raise InvalidInput("child task ids look like task_<hex>")
            await self.submit(
                org,
                role=role,
                agent=agent,
                priority=Priority.parse(str(body.get("priority", "normal"))),
                deadline=None,
                requirements=Requirements(),
                payload=inner,
                parent_id=str(body.get("parent") or "") or sender.busy_task,
                from_agent=sender.id,
                task_id=msg.task_id,
            )
        except CorralError as exc:
            refusal = TaskMessage(
                msg.task_id,
                "platform",
                sender.id,
                MessageType.BLOCKED,
                {"reason": f"delegation refused: {exc.message}"},
            )
            with contextlib.suppress(CorralError):
                await self.bus.deliver(org.slug, sender.id, refusal)

    # -- crashes --------------------------------------------------------------------------
    async def on_agent_lost(self, agent_id: str) -> None:
        """The agent died: its dispatched or running tasks are retried with backoff."""
        for rec in await self.tasks.find(states=list(ACTIVE), agent_id=agent_id):
            await self._retry(rec.id, f"agent {agent_id} was lost")

    async def requeue_orphans(self, live_agents: set[str]) -> None:
        """After a restart: work whose agent no longer runs goes back to the queue."""
        for rec in await self.tasks.find(states=list(ACTIVE), limit=10_000_000):
            if rec.agent_id not in live_agents:
                await self._retry(rec.id, "the control plane restarted")

    def _publish(self, rec: TaskRecord) -> None:
        self.hub.publish(rec.org, "task", {"task": rec.to_wire()})

    async def close(self) -> None:
        await self._background.close()


def _request_for(req: Requirements) -> ContainerRequest:
    return ContainerRequest(cpu_request=req.cpu, memory_request=req.memory, gpu=req.gpu)


def _view(agent: Agent) -> AgentView:
    if agent.state is AgentState.RUNNING:
        availability = AgentAvailability.BUSY if agent.busy_task else AgentAvailability.IDLE
    elif agent.state is AgentState.PAUSED:
        availability = AgentAvailability.PAUSED
    else:
        availability = AgentAvailability.UNAVAILABLE
    return AgentView(agent.id, agent.role, availability, agent.resources)


def _mark(
    views: dict[str, list[AgentView]],
    org_id: str,
    agent_id: AgentId,
    availability: AgentAvailability,
) -> None:
    lst = views.get(org_id, [])
    for i, v in enumerate(lst):
        if v.id == agent_id:
            lst[i] = AgentView(v.id, v.role, availability, v.resources)
