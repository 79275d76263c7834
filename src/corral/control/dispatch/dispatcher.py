"""The dispatcher: durable tasks in the store, the pure scheduler in memory, and the loop that
places queued tasks on agents and delivers them over the bus.

The store is the truth across restarts: the queue and the work in flight are rebuilt from it on
start. While it runs, the dispatcher is the only writer of task state (see
:mod:`corral.control.dispatch.book`). A task is acknowledged to its submitter, a task message
leaves for an agent, and an agent's event is acknowledged on the bus only after the writes they
depend on are committed.

An agent runs up to as many tasks at once as it announced when it became ready (its *slots*,
one unless it says otherwise). The loop never waits on an agent — it reacts to events, so tasks
may run for hours. When an agent is lost (it crashed, was paused with work in hand, was
terminated, or the control plane restarted under it) the controller says so through
:meth:`Dispatcher.agent_lost`, the one way in for that news; its tasks are retried elsewhere,
as their retry policies allow. Tasks sent to one agent alone fail when it is gone for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from opentelemetry.trace import Span

from corral.control import tracing
from corral.control.background import Background
from corral.control.dispatch.book import ACTIVE, TaskBook
from corral.control.dispatch.events import AgentEvents
from corral.control.dispatch.intake import Intake, Submission
from corral.control.dispatch.reaping import Reaper
from corral.control.dispatch.snapshot import AgentSnapshot, Views, mark, take
from corral.control.dispatch.supply import Supply
from corral.control.dispatch.timeouts import Timeouts
from corral.control.hub import EventHub
from corral.control.lifecycle import Controller
from corral.control.ports import BusEvent, BusPort
from corral.domain.agents import Agent, AgentState
from corral.domain.errors import CorralError, Unavailable
from corral.domain.ids import OrgId
from corral.domain.messages import MessageType, TaskMessage
from corral.domain.policies import TaskPolicy
from corral.domain.roles import Role
from corral.domain.tasks import Priority, Requirements, TaskFilter, TaskState
from corral.domain.tenancy import Organization
from corral.scheduling.placement import Action, AgentAvailability, Placement, wait
from corral.scheduling.scheduler import QueuedTask, Scheduler
from corral.store.quota import QuotaLedger
from corral.store.task_journal import TaskJournal
from corral.store.tasks import TaskRecord, TaskRepository, Transition
from corral.store.tenants import OrgRepository

__all__ = ["Dispatcher"]

log = logging.getLogger("corral.dispatcher")

#: how recent a dispatch is delivered again at a takeover: well inside the inbox stream's
#: duplicate window (120 s), where a second delivery of the same message is dropped
RESEND_WITHIN = 90.0

DECISIONS_PER_ROUND = 2000


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
        retention: Callable[[Organization], float] = lambda org: org.plan.task_retention_seconds,
        stop_grace: float = 10.0,
        roles: Callable[[str], list[Role]] = lambda org_id: [],
        role_orgs: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.tasks = tasks
        self.journal = journal
        self.orgs = orgs
        self.controller = controller
        self.bus = bus
        self.auto_provision = auto_provision
        self._wake = asyncio.Event()
        self._background = Background()
        #: told each task's seconds from queued to dispatched (the platform feeds its metrics;
        #: a list kept between scrapes grew without bound and dropped samples)
        self.on_dispatched: Callable[[float], None] = lambda seconds: None
        self.held = False  # while held, tasks are accepted and queued but none is dispatched
        #: why an org's tasks may not start now (its model budget is spent), or None
        self.held_back: Callable[[str], str | None] = lambda org_id: None
        # orgs whose capacity changed since the last round: events arrive while a round runs
        # on an older snapshot, so parked lanes are woken at the start of the next round too
        self._changed: set[str] = set()
        self.book = TaskBook(
            journal=journal,
            hub=hub,
            scheduler=Scheduler(aging_seconds=aging_seconds),
            on_capacity=self.capacity_changed,
            on_child_ended=self._child_ended,
            on_stop=lambda rec: self.timeouts.stop_handler(rec),
            stop_grace=stop_grace,
        )
        self.scheduler = self.book.scheduler
        self.roles = roles
        #: the orgs that declare roles (few, or none): a round asks whether one of them is
        #: known instead of asking every org for its roles
        self.role_orgs = role_orgs
        self.snapshot = AgentSnapshot(
            find_agents=lambda states: controller.agents.find(states=states),
            ledger=ledger,
            inflight=self.book.inflight,
            roles=roles,
            queued=lambda org_id, name: self.scheduler.queued_for(OrgId(org_id), name),
        )
        ledger.watch(self.snapshot.forget_usage)  # its use is read again when it changes
        self.reaper = Reaper(
            controller=controller,
            orgs=self.book.orgs,
            inflight=self.book.inflight,
            last_active=self.book.last_active,
            leaving=self.snapshot.leaving,
            background=self._background,
            on_capacity=self.capacity_changed,
            idle_timeout=idle_timeout,
            heartbeat_seconds=heartbeat_seconds,
            role=self.snapshot.role,
        )
        self.supply = Supply(
            controller=controller,
            snapshot=self.snapshot,
            capacity_changed=self.capacity_changed,
            roles=roles,
            inflight=self.book.inflight,
            background=self._background,
        )
        self.timeouts = Timeouts(
            book=self.book, bus=bus, controller=controller, background=self._background
        )
        self.intake = Intake(
            book=self.book,
            tasks=tasks,
            controller=controller,
            kick=self.kick,
            retention=retention,
        )
        self.events = AgentEvents(
            bus=bus,
            book=self.book,
            snapshot=self.snapshot,
            controller=controller,
            orgs=orgs,
            hub=hub,
            submit=self.intake.submit,
            on_capacity=self.capacity_changed,
            on_heard=self.reaper.heard,
            on_completed=lambda agent_id: controller.work_done(agent_id),
        )

    # -- start ----------------------------------------------------------------------------
    async def rebuild(self) -> None:
        """Load every org and unfinished task from the store; work in flight is counted
        against its agent (retried through :meth:`agent_lost` if that agent is gone)."""
        for org in await self.orgs.list():
            self.book.register(org)
        for rec in await self.tasks.find(states=[TaskState.QUEUED], limit=10_000_000):
            self.book.load(rec)
        for rec in await self.tasks.find(states=list(ACTIVE), limit=10_000_000):
            self.book.load(rec)
        gone: dict[str, Agent] = {}
        for agent in await self.controller.agents.find():
            if agent.busy_task is not None:
                self.book.adopt_shown(agent.id, agent.busy_task)
            if agent.state in (AgentState.TERMINATED, AgentState.FAILED):
                gone[agent.id] = agent
        for agent_id in gone.keys() & {r.target_agent for r in self.book.live.values()}:
            self.book.fail_pinned(agent_id, _gone(gone[agent_id]))  # sent to it alone
        await self.journal.flush()

    async def count_finished(self) -> None:
        """Read how many finished tasks the store holds (once, after :meth:`rebuild`, in the
        background: there may be millions); the book counts the rest as they are decided."""
        counts = self.book.counts
        mark = counts.begin_load()
        await self.journal.flush()  # whatever finished before the mark is in the store
        counts.finish_load(await self.tasks.count_finished(before=mark), self.book.orgs)

    # -- organizations and capacity -------------------------------------------------------
    def org_changed(self, org: Organization) -> None:
        self.book.register(org)
        self.snapshot.forget_usage(org.id)  # a new org's use, or a new plan's, is read
        self.kick()

    def org_removed(self, org: Organization) -> None:
        self.book.drop_org(org.id)

    def kick(self) -> None:
        self._wake.set()

    def roles_changed(self, org_id: str) -> None:
        """An org's roles changed: kept as declared from the next round, its tasks placed."""
        self.snapshot.forget()
        self.capacity_changed(org_id)

    def capacity_changed(self, org_id: str) -> None:
        """An agent of ``org_id`` became free or ready, or its quota was released."""
        self._changed.add(org_id)
        if org_id in self.book.orgs:
            self.scheduler.wake(OrgId(org_id))
        self.kick()

    def agent_changed(self, agent: Agent) -> None:
        """An agent's lifecycle state changed (the controller says so): forget the snapshot;
        the tasks sent to it alone fail if it is gone for good."""
        self.snapshot.agent_changed(agent)
        if agent.state in (AgentState.TERMINATED, AgentState.FAILED):
            self.book.release_stopping(agent.id)
            if self.book.fail_pinned(agent.id, _gone(agent)):
                self.kick()  # the loop's round commits them
        if agent.state is AgentState.TERMINATED:  # gone for good: nothing kept of it
            self.book.last_active.pop(agent.id, None)
        self.capacity_changed(agent.org_id)

    def current_task(self, agent_id: str) -> str | None:
        return self.book.current_task(agent_id)  # None: it holds no task

    def holders(self) -> list[str]:
        """Every agent that holds dispatched or running work."""
        return self.book.holders()

    # -- lost agents ----------------------------------------------------------------------
    async def agent_lost(self, agent_id: str, why: str | None = None) -> None:
        """The agent is gone or no longer runs its tasks: each is a failed attempt, retried
        with backoff as its policy allows; the handlers it was stopping are gone too."""
        self.snapshot.agent_lost(agent_id)
        self.book.release_stopping(agent_id)
        for task_id in self.book.held_by(agent_id):
            await self._retry(task_id, why or f"agent {agent_id} was lost", "AgentLost")

    async def resend(self, agent_ids: set[str]) -> int:
        """Deliver again the tasks recently dispatched to these agents (adopted at a takeover:
        the leader that committed a dispatch may have died before delivering it). Only those
        committed within :data:`RESEND_WITHIN`, inside the inbox stream's duplicate window, so
        that a delivery that had arrived is dropped by the stream (the message id names the
        task, its attempt and the agent) and never runs twice; how many were sent."""
        now = time.time()
        recs = [
            r
            for r in self.book.live.values()
            if r.state is TaskState.DISPATCHED
            and r.agent_id in agent_ids
            and now - r.updated_at.timestamp() < RESEND_WITHIN
        ]
        await self._send(recs)
        return len(recs)

    # -- intake ---------------------------------------------------------------------------
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
        policy: TaskPolicy | None = None,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
        received_at: datetime | None = None,
    ) -> TaskRecord:
        """Accept a task durably (``queued``), then let the loop place it (see
        :meth:`Intake.submit <corral.control.dispatch.intake.Intake.submit>`)."""
        return await self.intake.submit(
            org,
            role=role,
            agent=agent,
            priority=priority,
            deadline=deadline,
            requirements=requirements,
            payload=payload,
            parent_id=parent_id,
            from_agent=from_agent,
            task_id=task_id,
            policy=policy,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
            received_at=received_at,
        )

    async def submit_many(self, org: Organization, subs: Sequence[Submission]) -> list[TaskRecord]:
        """Accept tasks of one org together, all or none (see :meth:`Intake.submit_many`)."""
        return await self.intake.submit_many(org, subs)

    async def cancel(self, org: Organization, task_id: str) -> TaskRecord:
        """Cancel a task that has not ended (see :meth:`Intake.cancel`).

        Raises:
            NotFound: no such task in ``org``.
            Conflict: the task already ended.
        """
        return await self.intake.cancel(org, task_id)

    async def find_tasks(
        self,
        org: Organization,
        *,
        where: TaskFilter | None = None,
        cursor: str | None = None,
        limit: int = 500,
    ) -> tuple[list[TaskRecord], str | None]:
        """A page of ``org``'s tasks, newest first, of those ``where`` admits, and the cursor
        of the next page (``None``: the last).

        Raises:
            InvalidInput: a cursor no listing handed out.
        """
        return await self.intake.find(org, where=where or TaskFilter(), cursor=cursor, limit=limit)

    async def get_task(
        self, org: Organization, task_id: str
    ) -> tuple[TaskRecord, list[Transition], str | None]:
        """One task of ``org``, its history, and why it waits (``None``: it does not).

        Raises:
            NotFound: no such task in ``org``.
        """
        return await self.intake.get(org, task_id)

    # -- events from agents ---------------------------------------------------------------
    async def consume(self) -> None:
        """Record agents' events (see :class:`~corral.control.dispatch.events.AgentEvents`)."""
        await self.events.consume()

    async def handle(self, event: BusEvent) -> None:
        await self.events.handle(event)

    def _child_ended(self, child: TaskRecord) -> None:
        self._background.spawn(self.events.notify_parent(child), f"notify-{child.id}")

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        self.reaper.listening()
        self.kick()  # the first round at once: what the store held is placeable now
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
            if org_id in self.book.orgs:
                self.scheduler.wake(OrgId(org_id))
        self.book.release_due(now)
        for q in self.scheduler.expire(now):
            rec = self.book.live.get(q.id)
            if rec is not None and rec.state is TaskState.QUEUED:
                self.book.move(rec, TaskState.EXPIRED, detail="deadline passed")
        self.timeouts.check(now)
        await self.reaper.reap()
        if not self.held and not self.controller.bus_health.disturbed() and self._declares_roles():
            self.supply.keep(self.book.orgs, await self.snapshot.agents())
        if len(self.scheduler) == 0 or self.held or self.controller.bus_health.disturbed():
            await self.journal.flush()  # while the bus does not answer, nothing is sent
            return
        views = await self.snapshot.views()
        usage = await self.snapshot.usage() if self.auto_provision else {}
        sends: list[TaskRecord] = []
        decisions = 0
        held_back = self.held_back

        def placer(t: QueuedTask) -> Placement:
            why = held_back(t.org)
            if why is not None:
                return wait(why)
            org = self.book.orgs[t.org]
            return self.snapshot.place(t, org, views, usage, auto_provision=self.auto_provision)

        while decisions < DECISIONS_PER_ROUND:
            decision = self.scheduler.pop_next(now, placer)
            if decision is None:
                break
            decisions += 1
            sent = self._act(decision.task, decision.placement, views)
            if sent is not None:
                sends.append(sent)
        await self.journal.flush()
        if sends:
            await self._send(sends)
        # placed again at the next round (within half a second), their use read by then
        self._changed |= self.snapshot.unread()
        if decisions >= DECISIONS_PER_ROUND:
            self.kick()  # more may be placeable: another round right away

    def _declares_roles(self) -> bool:
        """Whether an org of the book declares a role (the supply then keeps its agents)."""
        if self.role_orgs is None:
            return any(self.roles(org_id) for org_id in self.book.orgs)
        orgs = self.book.orgs
        return any(org_id in orgs for org_id in self.role_orgs())

    def _act(self, task: QueuedTask, placement: Placement, views: Views) -> TaskRecord | None:
        """Carry out one decision; returns the task to send once the round is committed."""
        org = self.book.orgs[task.org]
        if placement.action is Action.USE and placement.agent_id is not None:
            rec = self.book.live.get(task.id)
            if rec is None or rec.state is not TaskState.QUEUED:  # ended meanwhile
                self.scheduler.on_finished(task.org)
                return None
            take(views, org.id, placement.agent_id)
            self.book.take_slot(placement.agent_id, task.id)
            return self.book.move(
                rec,
                TaskState.DISPATCHED,
                detail=f"to {placement.agent_id}",
                agent_id=placement.agent_id,
                attempts=rec.attempts + 1,
            )
        # WAKE or PROVISION: the task goes back to the queue until the agent is ready
        self.scheduler.put_back(task)
        key = (org.id, task.role)
        self.snapshot.incoming[key] += 1
        if placement.action is Action.WAKE and placement.agent_id is not None:
            mark(views, org.id, placement.agent_id, AgentAvailability.UNAVAILABLE)
            self._background.spawn(
                self.supply.wake(org, placement.agent_id, key), f"wake-{placement.agent_id}"
            )
        elif task.role is not None:
            name = self.supply.reserve(org, task.role, views.agents(org.id))  # counted now
            provision = self.supply.provision(org, task.role, name, key)
            self._background.spawn(provision, f"provision-{org.slug}-{name}")
        # the placement is re-asked when the agent reports ready (scheduler.wake)
        return None

    async def _send(self, recs: list[TaskRecord]) -> None:
        """Deliver committed dispatches to their agents' inboxes, all at once."""
        out: list[tuple[str, str, TaskMessage]] = []
        sent: list[TaskRecord] = []
        spans: dict[str, Span] = {}  # task id → its dispatch span (only traced tasks)
        for rec in recs:
            current = self.book.live.get(rec.id)
            if current is None or current.state is not TaskState.DISPATCHED:
                continue  # cancelled while the round committed
            if current.attempts != rec.attempts or rec.agent_id is None:
                continue
            parent = rec.traceparent
            if parent is not None:
                span = spans[rec.id] = tracing.start_dispatch(
                    parent, org=rec.org, task=rec.id, agent=rec.agent_id, attempt=rec.attempts
                )
            message = TaskMessage(
                rec.id,
                rec.from_agent or "platform",
                rec.agent_id,
                MessageType.DELEGATE,
                rec.payload,
                rec.attempts,
                None if parent is None else tracing.traceparent_of(span),
            )
            out.append((rec.org, rec.agent_id, message))
            sent.append(rec)
        if not out:
            return
        try:
            results = await self.bus.deliver_many(out, batching=self.snapshot.batching)
        except CorralError as exc:  # the bus as a whole (closed, a violation): all of them
            results = [exc] * len(out)
        now = time.time()
        # a delivery that found no answer is the bus's fault if the bus answers nobody now
        unanswered = any(isinstance(r, Unavailable) for r in results)
        bus_down = unanswered and not await self.controller.bus_health.check()
        for rec, result in zip(sent, results, strict=True):
            sent_span = spans.get(rec.id) if spans else None
            if sent_span is not None:
                tracing.end_dispatch(sent_span, result)
            with tracing.inside(sent_span):  # what is logged of this delivery names its trace
                await self._delivered(rec, result, now=now, bus_down=bus_down)

    async def _delivered(
        self, rec: TaskRecord, result: object, *, now: float, bus_down: bool
    ) -> None:
        if bus_down and isinstance(result, Unavailable):
            if await self.book.requeue_untried(rec.id, f"delivery failed: {result.message}"):
                self.kick()
        elif isinstance(result, CorralError):
            log.warning(
                "delivery of %s to %s failed: %s",
                rec.id,
                rec.agent_id,
                result.message,
                extra={"org": rec.org, "agent": rec.agent_id, "task": rec.id},
            )
            await self._retry(rec.id, f"delivery failed: {result.message}")
        else:
            self.on_dispatched(now - rec.created_at.timestamp())

    async def _retry(self, task_id: str, why: str, error_type: str | None = None) -> None:
        """A dispatched or running task back in the queue, or failed; committed on return."""
        if await self.book.retry(task_id, why, error_type=error_type):
            self.kick()

    async def close(self) -> None:
        await self._background.close()
        await self.journal.close()


def _gone(agent: Agent) -> str:
    why = f"agent {agent.id} is {agent.state.value}"
    return f"{why} ({agent.detail})" if agent.detail else why
