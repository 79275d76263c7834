"""The dispatcher: durable tasks in the store, the pure scheduler in memory, delivery over the
bus, and the agent events that move tasks along.

The store is the truth across restarts: the queue and the work in flight are rebuilt from it on
start. While it runs, the dispatcher is the only writer of task state and keeps every
unfinished task in memory; it decides each transition there (so an event delivered twice is
recorded once) and makes it durable through the :class:`~corral.store.task_journal.TaskJournal`,
which commits many transitions in one transaction. A task is acknowledged to its submitter, a
task message leaves for an agent, and an agent's event is acknowledged on the bus only after
the writes they depend on are committed; news of a transition goes out after its commit.

An agent runs up to as many tasks at once as it announced when it became ready (its *slots*,
one unless it says otherwise). The loop never waits on an agent — it reacts to events, so tasks
may run for hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from corral.domain.agents import MAX_SLOTS, Agent, AgentState
from corral.domain.errors import Conflict, CorralError, InvalidInput, NotFound, QuotaExceeded
from corral.domain.ids import AgentId, OrgId, TaskId, new_task_id
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
from corral.store.task_journal import TaskJournal
from corral.store.tasks import TaskRecord, TaskRepository
from corral.store.tenants import OrgRepository

__all__ = ["Dispatcher", "new_task_id"]

log = logging.getLogger("corral.dispatcher")

MAX_ATTEMPTS = 5
MAX_INCOMING_PER_ROLE = 2  # agents being provisioned/resumed at once for one (org, role)
ACTIVE = (TaskState.DISPATCHED, TaskState.RUNNING)
DECISIONS_PER_ROUND = 2000
AGENT_LIST_TTL = 1.0  # seconds a snapshot of the agents' lifecycle states is reused


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
        journal: TaskJournal,
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
        self.journal = journal
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
        # every unfinished task (queued, dispatched, running), as last decided
        self._live: dict[str, TaskRecord] = {}
        # agent id → the tasks it holds (dispatched or running); its announced slots
        self._inflight: dict[str, set[str]] = defaultdict(set)
        self._slots: dict[str, int] = {}
        self._batching: set[str] = set()  # agents that said they read batches of tasks
        self._shown: dict[str, str | None] = {}  # the task each agent shows as current
        self._agent_list: dict[str, list[Agent]] | None = None
        self._agent_list_at = 0.0
        self._agent_generation = 0  # bumped by every change: a snapshot read across one is stale
        self._leaving: set[str] = set()  # being paused for idleness: no new work
        self._usage_snapshot: dict[str, UsageSnapshot] | None = None
        self._usage_at = 0.0

    # -- start ----------------------------------------------------------------------------
    async def rebuild(self) -> None:
        """Load every org and unfinished task from the store; work in flight is counted
        against its agent (requeued by :meth:`requeue_orphans` if that agent is gone)."""
        for org in await self.orgs.list():
            self._register(org)
        for rec in await self.tasks.find(states=[TaskState.QUEUED], limit=10_000_000):
            if rec.org_id in self._orgs_by_id:
                self._live[rec.id] = rec
                self._enqueue(rec)
        for rec in await self.tasks.find(states=list(ACTIVE), limit=10_000_000):
            if rec.org_id in self._orgs_by_id:
                self._live[rec.id] = rec
                if rec.agent_id is not None:
                    self._inflight[rec.agent_id].add(rec.id)
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
        for task_id in [t for t, r in self._live.items() if r.org_id == org.id]:
            rec = self._live.pop(task_id)
            if rec.agent_id is not None and rec.agent_id in self._inflight:
                self._inflight[rec.agent_id].discard(task_id)
                if not self._inflight[rec.agent_id]:
                    del self._inflight[rec.agent_id]
        self._delayed = [(t, q) for t, q in self._delayed if q.org != org.id]

    def kick(self) -> None:
        self._wake.set()

    def capacity_changed(self, org_id: str) -> None:
        """An agent of ``org_id`` became free or ready, or its quota was released."""
        self._changed.add(org_id)
        if org_id in self._orgs_by_id:
            self.scheduler.wake(OrgId(org_id))
        self.kick()

    def agent_changed(self, agent: Agent) -> None:
        """An agent's lifecycle state changed (the controller says so): forget the snapshot."""
        self._agent_list = self._usage_snapshot = None
        self._agent_generation += 1
        if agent.state is not AgentState.RUNNING:
            self._slots.pop(agent.id, None)
        gone = (AgentState.PAUSED, AgentState.TERMINATED, AgentState.FAILED)
        if agent.state in gone and self._inflight.get(agent.id):
            # paused with force, or ended, holding work: it is retried elsewhere
            self._background.spawn(self.on_agent_lost(agent.id), f"requeue-{agent.id}")
        self.capacity_changed(agent.org_id)

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

    # -- recording ------------------------------------------------------------------------
    def _move(
        self,
        rec: TaskRecord,
        to: TaskState,
        *,
        detail: str = "",
        via: TaskState | None = None,
        **fields: Any,
    ) -> TaskRecord:
        """Decide ``rec → to`` (through ``via`` first, if given) in memory and append it to
        the journal; news of it goes out once it is committed."""
        now = self._journal_move(rec, to, via=via, detail=detail, **fields)
        done = dataclasses.replace(rec, state=to, updated_at=now, **fields)
        if to.is_terminal:
            self._live.pop(rec.id, None)
        else:
            self._live[rec.id] = done
        if self.hub.wants(done.org):
            self.journal.on_commit(lambda: self._publish(done))
        if to.is_terminal and done.parent_id is not None and done.from_agent is not None:
            self.journal.on_commit(
                lambda: self._background.spawn(self._notify_parent(done), f"notify-{done.id}")
            )
        return done

    def _journal_move(
        self, rec: TaskRecord, to: TaskState, *, via: TaskState | None, detail: str, **fields: Any
    ) -> datetime:
        """Append ``rec → (via →) to`` to the journal; returns the time it was decided."""
        now = datetime.now(UTC)
        if via is not None:
            self.journal.move(rec.id, rec.state, via, at=now)
        self.journal.move(rec.id, via or rec.state, to, at=now, detail=detail, **fields)
        return now

    def _take_slot(self, agent_id: str, task_id: str) -> None:
        self._inflight[agent_id].add(task_id)
        self._show_current(agent_id)

    def _free_slot(self, rec: TaskRecord) -> None:
        """``rec`` no longer holds a slot of its agent (finished, retried or cancelled)."""
        if rec.agent_id is not None:
            held = self._inflight.get(rec.agent_id)
            if held is not None:
                held.discard(rec.id)
                if not held:
                    del self._inflight[rec.agent_id]
            self._show_current(rec.agent_id)
        self.scheduler.on_finished(OrgId(rec.org_id))
        self.capacity_changed(rec.org_id)

    def _show_current(self, agent_id: str) -> None:
        """Keep the agent's ``currentTask`` in the store pointing at one of its tasks; it is
        written only when that changes, not for every task."""
        held = self._inflight.get(agent_id)
        shown = self._shown.get(agent_id)
        if held:
            if shown in held:
                return
            shown = min(held)
        elif shown is None:
            return
        else:
            shown = None
        self._shown[agent_id] = shown
        self.journal.agent_busy(agent_id, shown, at=datetime.now(UTC))

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
            Conflict: a task of that id exists (a delegation sent twice).
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
        task_id = task_id or new_task_id()
        if task_id in self._live:
            raise Conflict(f"task {task_id} exists", details={"task": task_id})
        now = datetime.now(UTC)
        rec = TaskRecord(
            id=task_id,
            seq=time.time_ns(),
            org_id=org.id,
            org=org.slug,
            plan=org.plan.name,
            role=role,
            target_agent=agent,
            agent_id=None,
            parent_id=parent_id,
            from_agent=from_agent,
            priority=priority,
            deadline=deadline,
            requirements=reqs,
            payload=payload,
            result=None,
            state=TaskState.QUEUED,
            attempts=0,
            progress=None,
            not_before=None,
            created_at=now,
            updated_at=now,
        )
        self.journal.create(_row(rec), at=now)
        if task_id in await self.journal.flush():
            raise Conflict(f"task {task_id} exists", details={"task": task_id})
        if org.id not in self._orgs_by_id:
            self._register(org)
        self._live[rec.id] = rec
        self._enqueue(rec)
        self._publish(rec)
        self.kick()
        return rec

    async def cancel(self, org: Organization, task_id: str) -> TaskRecord:
        """Cancel a task that has not ended; its agent, if it has one, is told nothing (its
        late result is ignored) and its slot is free at once.

        Raises:
            NotFound: no such task in ``org``.
            Conflict: the task already ended.
        """
        rec = self._live.get(task_id)
        if rec is None or rec.org_id != org.id:
            stored = await self.tasks.get(task_id, org_id=org.id)
            raise Conflict(
                f"task {task_id} is already {stored.state.value}",
                details={"task": task_id, "state": stored.state.value},
            )
        done = self._move(rec, TaskState.CANCELLED, detail="cancelled by user")
        self.scheduler.remove(TaskId(task_id))
        self._delayed = [(t, q) for t, q in self._delayed if q.id != task_id]
        if rec.state in ACTIVE:
            self._free_slot(rec)
        await self.journal.flush()
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
            rec = self._live.get(q.id)
            if rec is not None and rec.state is TaskState.QUEUED:
                self._move(rec, TaskState.EXPIRED, detail="deadline passed")
        if time.monotonic() - self._last_reap >= 1.0:  # not on every round: rounds follow events
            self._last_reap = time.monotonic()
            await self._reap_idle()
            await self._reap_silent()
        if len(self.scheduler) == 0 or self.held:
            await self.journal.flush()
            return
        views = _Views(await self._agents(), self._view_of)
        usage = await self._usage() if self.auto_provision else {}
        sends: list[TaskRecord] = []
        decisions = 0
        while decisions < DECISIONS_PER_ROUND:
            decision = self.scheduler.pop_next(now, lambda t: self._place(t, views, usage))
            if decision is None:
                break
            decisions += 1
            sent = self._act(decision.task, decision.placement, views)
            if sent is not None:
                sends.append(sent)
        await self.journal.flush()
        if sends:
            await self._send(sends)
        if decisions >= DECISIONS_PER_ROUND:
            self.kick()  # more may be placeable: another round right away

    async def _agents(self) -> dict[str, list[Agent]]:
        """Every agent that is not terminated, by org, from a snapshot at most a second old
        (changes the controller reports drop it at once)."""
        now = time.monotonic()
        if self._agent_list is not None and now - self._agent_list_at <= AGENT_LIST_TTL:
            return self._agent_list
        live = [s for s in AgentState if s is not AgentState.TERMINATED]
        while True:
            generation = self._agent_generation
            by_org: dict[str, list[Agent]] = defaultdict(list)
            for agent in await self.controller.agents.find(states=live):
                by_org[agent.org_id].append(agent)
            if generation == self._agent_generation:  # no change while it was read
                break
        self._agent_list = dict(by_org)
        self._agent_list_at = now
        return self._agent_list

    async def _usage(self) -> dict[str, UsageSnapshot]:
        """Each org's quota use, from a snapshot at most a second old (dropped whenever an
        agent's lifecycle changes). A stale answer only costs a provision the ledger refuses:
        the charge itself is atomic."""
        now = time.monotonic()
        if self._usage_snapshot is None or now - self._usage_at > AGENT_LIST_TTL:
            self._usage_snapshot = await self.ledger.all_usage()
            self._usage_at = now
        return self._usage_snapshot

    def _view_of(self, a: Agent) -> AgentView:
        """The agent as placement sees it now: its free slots come from the work in flight."""
        if a.state is AgentState.RUNNING and a.id not in self._leaving:
            # what it announced, never more than it was provisioned with
            free = min(self._slots.get(a.id, 1), a.slots) - len(self._inflight.get(a.id, ()))
            availability = AgentAvailability.IDLE if free > 0 else AgentAvailability.BUSY
            return AgentView(a.id, a.role, availability, a.resources, max(0, free))
        if a.state is AgentState.RUNNING:
            return AgentView(a.id, a.role, AgentAvailability.UNAVAILABLE, a.resources)
        return _view(a)

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

        placement = place(task, views[org.id], may_provision=may_provision)
        if placement.action is Action.WAIT and self._incoming[(org.id, task.role)]:
            return wait(f"waiting for a {task.role!r} agent that is starting")
        return placement

    def _act(
        self, task: QueuedTask, placement: Placement, views: dict[str, list[AgentView]]
    ) -> TaskRecord | None:
        """Carry out one decision; returns the task to send once the round's writes are
        committed."""
        org = self._orgs_by_id[task.org]
        if placement.action is Action.USE and placement.agent_id is not None:
            rec = self._live.get(task.id)
            if rec is None or rec.state is not TaskState.QUEUED:  # ended meanwhile
                self.scheduler.on_finished(task.org)
                return None
            _take(views, org.id, placement.agent_id)
            self._take_slot(placement.agent_id, task.id)
            return self._move(
                rec,
                TaskState.DISPATCHED,
                detail=f"to {placement.agent_id}",
                agent_id=placement.agent_id,
                attempts=rec.attempts + 1,
            )
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
        return None

    async def _send(self, recs: list[TaskRecord]) -> None:
        """Deliver committed dispatches to their agents' inboxes, all at once."""
        out: list[tuple[str, str, TaskMessage]] = []
        sent: list[TaskRecord] = []
        for rec in recs:
            current = self._live.get(rec.id)
            if current is None or current.state is not TaskState.DISPATCHED:
                continue  # cancelled while the round committed
            if current.attempts != rec.attempts or rec.agent_id is None:
                continue
            message = TaskMessage(
                rec.id,
                rec.from_agent or "platform",
                rec.agent_id,
                MessageType.DELEGATE,
                rec.payload,
                rec.attempts,
            )
            out.append((rec.org, rec.agent_id, message))
            sent.append(rec)
        if not out:
            return
        try:
            results = await self.bus.deliver_many(out, batching=self._batching)
        except CorralError as exc:  # the bus as a whole (closed, a violation): all of them
            results = [exc] * len(out)
        now = time.time()
        for rec, result in zip(sent, results, strict=True):
            if isinstance(result, CorralError):
                log.warning("delivery of %s to %s failed: %s", rec.id, rec.agent_id, result.message)
                await self._retry(rec.id, f"delivery failed: {result.message}")
            else:
                self.dispatch_latency.append(now - rec.created_at.timestamp())

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
            self._usage_snapshot = None
            self.capacity_changed(org.id)

    async def _wake_agent(
        self, org: Organization, agent_id: AgentId, key: tuple[str, str | None]
    ) -> None:
        try:
            await self.controller.resume(org, agent_id)
        except CorralError as exc:
            log.warning("could not resume %s: %s", agent_id, exc.message)
            self._incoming[key] -= 1
            self._usage_snapshot = None
            self.capacity_changed(org.id)

    async def _retry(self, task_id: str, why: str) -> None:
        """Put a dispatched or running task back in the queue with backoff, or fail it after
        :data:`MAX_ATTEMPTS`; committed before it returns."""
        rec = self._live.get(task_id)
        if rec is None or rec.state not in ACTIVE:
            return
        self._free_slot(rec)
        if rec.attempts >= MAX_ATTEMPTS:
            self._move(rec, TaskState.FAILED, detail=f"{why}; gave up")
        else:
            backoff = min(30.0, 0.25 * 2 ** (rec.attempts - 1))
            queued = self._move(
                rec,
                TaskState.QUEUED,
                detail=f"{why}; retry in {backoff:.2f}s",
                agent_id=None,
                progress=None,
                not_before=datetime.now(UTC) + timedelta(seconds=backoff),
            )
            self._enqueue(queued, not_before=time.time() + backoff)
        await self.journal.flush()
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
            if self._inflight.get(agent.id) or agent.id in self._leaving:
                continue
            org = self._orgs_by_id.get(agent.org_id)
            if org is None:
                continue
            last = max(agent.updated_at, agent.resumed_at or agent.created_at)
            if (now - last).total_seconds() >= self.idle_timeout(org):
                log.info("pausing %s after %ss idle", agent.id, self.idle_timeout(org))
                self._leaving.add(agent.id)  # from now on it is given nothing
                self._background.spawn(self._pause_idle(org, agent.id), f"idle-pause-{agent.id}")

    async def _pause_idle(self, org: Organization, agent_id: str) -> None:
        try:
            with contextlib.suppress(CorralError):
                await self.controller.pause(org, agent_id)
        finally:
            self._leaving.discard(agent_id)
            self.capacity_changed(org.id)

    # -- events from agents ---------------------------------------------------------------
    async def consume(self) -> None:
        """Record agents' events a batch at a time: handle each, commit what they decided in
        one transaction, then acknowledge them (an event whose effects are not committed is
        delivered again)."""
        async for batch in self.bus.event_batches():
            for event in batch:
                try:
                    await self.handle(event)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("event from %s/%s failed", event.org, event.agent_id)
            try:
                await self.journal.flush()
            except CorralError as exc:
                log.error("events not recorded, they will come again: %s", exc.message)
                continue
            with contextlib.suppress(Exception):
                await self.bus.acknowledge(batch)

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
        if kind in (StatusKind.READY, StatusKind.HEARTBEAT):
            slots = status.detail.get("slots")
            if isinstance(slots, int) and not isinstance(slots, bool) and slots > 0:
                self._slots[agent_id] = min(slots, MAX_SLOTS)
            if status.detail.get("batches") is True:
                self._batching.add(agent_id)
            elif kind is StatusKind.READY:
                self._batching.discard(agent_id)
        if kind is StatusKind.READY:
            try:
                agent = await self.controller.agents.get(agent_id)
            except NotFound:
                return
            if agent.org != event.org:
                return
            await self.controller.on_ready(event.org, agent_id)
            self._agent_list = None
            self._agent_generation += 1
            key = (agent.org_id, agent.role)
            if self._incoming.get(key):
                self._incoming[key] -= 1
            self.capacity_changed(agent.org_id)
            return
        if status.current_task is None:
            return
        rec = self._owned(event.org, agent_id, status.current_task)
        if rec is None:
            return
        if kind is StatusKind.ACCEPTED:
            if rec.state is TaskState.DISPATCHED:
                self._move(rec, TaskState.RUNNING, progress=0.0)
        elif kind is StatusKind.WORKING and status.progress is not None:
            if rec.state is TaskState.RUNNING:
                self.journal.progress(rec.id, status.progress)
                self._live[rec.id] = dataclasses.replace(rec, progress=status.progress)
            self.hub.publish(
                event.org,
                "progress",
                {"task": rec.id, "progress": status.progress, **status.detail},
            )

    def _owned(self, org_slug: str, agent_id: str, task_id: str) -> TaskRecord | None:
        """The unfinished task ``task_id`` if ``agent_id`` of ``org_slug`` holds it now; an
        older attempt's late event, a finished task's duplicate or a forgery get None."""
        rec = self._live.get(task_id)
        if rec is None or rec.org != org_slug or rec.agent_id != agent_id:
            return None
        return rec

    async def _on_task_message(self, org_slug: str, agent_id: str, msg: TaskMessage) -> None:
        if msg.type is MessageType.DELEGATE:
            await self._on_delegate(org_slug, agent_id, msg)
            return
        rec = self._owned(org_slug, agent_id, msg.task_id)
        if rec is None or rec.state not in ACTIVE:
            return  # not this agent's task, or recorded already: recorded once
        if msg.attempt < rec.attempts:
            return  # a late result of an earlier attempt (still in an inbox when retried)
        outcome = TaskState.COMPLETED if msg.type is MessageType.COMPLETE else TaskState.BLOCKED
        via = TaskState.RUNNING if rec.state is TaskState.DISPATCHED else None
        detail = str(msg.payload.get("reason", "")) if outcome is TaskState.BLOCKED else ""
        progress = 1.0 if outcome is TaskState.COMPLETED else rec.progress
        if rec.parent_id is None and not self.hub.wants(rec.org):
            # the common case under load: nobody needs the finished record, only the store
            self._journal_move(
                rec, outcome, via=via, detail=detail, result=msg.payload, progress=progress
            )
            del self._live[rec.id]
        else:
            self._move(rec, outcome, via=via, detail=detail, result=msg.payload, progress=progress)
        self._free_slot(rec)

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
        if msg.task_id in self._live:
            return  # the same request delivered twice
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
        parent = str(body.get("parent") or "") or self._shown.get(sender.id)
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
                parent_id=parent,
                from_agent=sender.id,
                task_id=msg.task_id,
            )
        except Conflict:
            return  # recorded before (a redelivery after a restart)
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
        self._agent_list = None
        self._agent_generation += 1
        self._slots.pop(agent_id, None)
        for task_id in sorted(self._inflight.get(agent_id, set())):
            await self._retry(task_id, f"agent {agent_id} was lost")

    async def requeue_orphans(self, live_agents: set[str]) -> None:
        """After a restart: work whose agent no longer runs goes back to the queue."""
        orphans = [
            r.id for r in self._live.values() if r.state in ACTIVE and r.agent_id not in live_agents
        ]
        for task_id in orphans:
            await self._retry(task_id, "the control plane restarted")

    def _publish(self, rec: TaskRecord) -> None:
        if self.hub.wants(rec.org):
            self.hub.publish(rec.org, "task", {"task": rec.to_wire()})

    async def close(self) -> None:
        await self._background.close()
        await self.journal.close()


def _row(rec: TaskRecord) -> dict[str, Any]:
    """The ``tasks`` row of a new task."""
    return {
        "id": rec.id,
        "seq": rec.seq,
        "org_id": rec.org_id,
        "role": rec.role,
        "target_agent": rec.target_agent,
        "agent_id": rec.agent_id,
        "parent_id": rec.parent_id,
        "from_agent": rec.from_agent,
        "priority": rec.priority.value,
        "deadline": rec.deadline,
        "requirements": rec.requirements,
        "payload": rec.payload,
        "result": rec.result,
        "state": rec.state.value,
        "attempts": rec.attempts,
        "progress": rec.progress,
        "not_before": rec.not_before,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
    }


class _Views(dict[str, list[AgentView]]):
    """One round's snapshot of agents as placement sees them, built per org on first use:
    a round touches only the orgs whose tasks it places, however many agents exist."""

    def __init__(
        self, agents: dict[str, list[Agent]], view_of: Callable[[Agent], AgentView]
    ) -> None:
        super().__init__()
        self._agents = agents
        self._view_of = view_of

    def __missing__(self, org_id: str) -> list[AgentView]:
        views = [self._view_of(a) for a in self._agents.get(org_id, ())]
        self[org_id] = views
        return views


def _request_for(req: Requirements) -> ContainerRequest:
    return ContainerRequest(cpu_request=req.cpu, memory_request=req.memory, gpu=req.gpu)


def _view(agent: Agent) -> AgentView:
    """An agent that is not running, as placement sees it."""
    if agent.state is AgentState.PAUSED:
        availability = AgentAvailability.PAUSED
    else:
        availability = AgentAvailability.UNAVAILABLE
    return AgentView(agent.id, agent.role, availability, agent.resources)


def _take(views: dict[str, list[AgentView]], org_id: str, agent_id: AgentId) -> None:
    """One slot of the agent is taken in this round's snapshot."""
    lst = views[org_id]
    for i, v in enumerate(lst):
        if v.id == agent_id:
            free = max(0, v.free_slots - 1)
            availability = AgentAvailability.IDLE if free else AgentAvailability.BUSY
            lst[i] = AgentView(v.id, v.role, availability, v.resources, free)


def _mark(
    views: dict[str, list[AgentView]],
    org_id: str,
    agent_id: AgentId,
    availability: AgentAvailability,
) -> None:
    lst = views[org_id]
    for i, v in enumerate(lst):
        if v.id == agent_id:
            lst[i] = AgentView(v.id, v.role, availability, v.resources)
