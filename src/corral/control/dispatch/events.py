"""The consumer of agents' events: each goes to the service that owns what it is about.

An agent's lifecycle (it is ready, it is alive) is the controller's: ``ready`` and heartbeats
go to :class:`~corral.control.lifecycle.Controller`, which records them; the slots and batching
an agent announces with them feed the placement snapshot. A task's progress is the
dispatcher's: accepted, working, complete, blocked and delegations move tasks in the task book.

Events are recorded a batch at a time: each is handled, what they decided is committed in one
transaction, and only then are they acknowledged, so an event whose effects are not committed
is delivered again. Every decision is made against the book, so a redelivered event is recorded
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from corral.control.dispatch.book import ACTIVE, TaskBook
from corral.control.dispatch.snapshot import AgentSnapshot
from corral.control.hub import EventHub
from corral.control.lifecycle import Controller
from corral.control.ports import BusEvent, BusPort
from corral.domain import objects
from corral.domain.errors import Conflict, CorralError, InvalidInput, NotFound
from corral.domain.ids import TASK_ID_PREFIX
from corral.domain.messages import MessageType, StatusKind, StatusMessage, TaskMessage
from corral.domain.rates import TokenBuckets
from corral.domain.tasks import Priority, Requirements, TaskState
from corral.domain.tenancy import Organization
from corral.store.tasks import TaskRecord
from corral.store.tenants import OrgRepository

__all__ = ["AgentEvents", "Submit"]

log = logging.getLogger("corral.dispatcher")


class Submit(Protocol):
    async def __call__(
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
        traceparent: str | None = None,
    ) -> TaskRecord: ...


class AgentEvents:
    def __init__(
        self,
        *,
        bus: BusPort,
        book: TaskBook,
        snapshot: AgentSnapshot,
        controller: Controller,
        orgs: OrgRepository,
        hub: EventHub,
        submit: Submit,
        on_capacity: Callable[[str], None],
        on_heard: Callable[[str], None] = lambda agent_id: None,
        on_completed: Callable[[str], None] = lambda agent_id: None,
    ) -> None:
        #: delegations an org's agents may ask for: ten times its plan's API rate and burst
        self._delegations = TokenBuckets()
        self._bus = bus
        self._book = book
        self._snapshot = snapshot
        self._controller = controller
        self._orgs = orgs
        #: told (org, task, attempt) of a result in the org's object store that is no task's
        self.on_unrecorded_object: Callable[[str, str, int], None] = lambda org, t, a: None
        self._hub = hub
        self._submit = submit
        self._on_capacity = on_capacity
        self._on_heard = on_heard  # the agent spoke: it is not silent
        self._on_completed = on_completed  # the agent completed a task

    async def consume(self) -> None:
        """Record agents' events a batch at a time: handle each, commit what they decided in
        one transaction, then acknowledge them (an event whose effects are not committed is
        delivered again)."""
        async for batch in self._bus.event_batches():
            for event in batch:
                try:
                    await self.handle(event)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("event from %s/%s failed", event.org, event.agent_id)
            try:
                await self._book.journal.flush()
            except CorralError as exc:
                log.error("events not recorded, they will come again: %s", exc.message)
                continue
            with contextlib.suppress(Exception):
                await self._bus.acknowledge(batch)
            self._controller.record_heard_soon()

    async def handle(self, event: BusEvent) -> None:
        if not event.agent_vouched:
            return  # platform.agents.status: informational, the agent is the payload's claim
        if isinstance(event.message, StatusMessage):
            await self._on_status(event, event.message)
        elif isinstance(event.message, TaskMessage):
            await self._on_task_message(event.org, event.agent_id, event.message)

    # -- status: the agent's lifecycle to the controller, its task's progress to the book --
    async def _on_status(self, event: BusEvent, status: StatusMessage) -> None:
        agent_id = event.agent_id
        kind = status.status
        if kind is not StatusKind.READY:  # on_ready records it with the agent's new state
            self._controller.heard_from(agent_id)
        self._on_heard(agent_id)
        if kind in (StatusKind.READY, StatusKind.HEARTBEAT):
            self._snapshot.announce(agent_id, kind, status.detail)
        if kind is StatusKind.READY:
            agent = await self._controller.on_ready(event.org, agent_id)
            if agent is not None:
                self._snapshot.agent_ready(agent)
                self._on_capacity(agent.org_id)
            return
        if status.current_task is None:
            return
        rec = self._book.owned(event.org, agent_id, status.current_task)
        if rec is None:
            return
        if kind is StatusKind.ACCEPTED:
            if rec.state is TaskState.DISPATCHED:
                self._book.move(rec, TaskState.RUNNING, progress=0.0)
        elif kind is StatusKind.WORKING and status.progress is not None:
            if rec.state is TaskState.DISPATCHED:  # its ``accepted`` is still on its way
                rec = self._book.move(rec, TaskState.RUNNING, progress=0.0)
            if rec.state is TaskState.RUNNING:
                self._book.progress(rec, status.progress)
            self._hub.publish(
                event.org,
                "progress",
                {"task": rec.id, "progress": status.progress, **status.detail},
            )

    # -- task messages: results and delegations -------------------------------------------
    async def _on_task_message(self, org_slug: str, agent_id: str, msg: TaskMessage) -> None:
        if msg.type is MessageType.DELEGATE:
            await self._on_delegate(org_slug, agent_id, msg)
            return
        if not msg.type.ends_task:
            return  # only the platform asks an agent to stop a task
        book = self._book
        rec = book.owned(org_slug, agent_id, msg.task_id)
        if rec is None or rec.state not in ACTIVE:
            # a stopped task's handler ended (its slot is free now), or not this agent's
            # task, or recorded already: recorded once
            if book.handler_ended(agent_id, msg.task_id):
                self._unrecorded(org_slug, msg)
            return
        if msg.attempt < rec.attempts:
            self._unrecorded(org_slug, msg)
            return  # a late result of an earlier attempt (still in an inbox when retried)
        if rec.deadline is not None and rec.deadline.timestamp() <= time.time():
            self._past_deadline(org_slug, rec, msg)
            return
        if msg.type is MessageType.FAILED or msg.type is MessageType.CANCELLED:
            self._failed(rec, msg)
            return
        if msg.type is MessageType.COMPLETE:
            self._on_completed(agent_id)
        outcome = TaskState.COMPLETED if msg.type is MessageType.COMPLETE else TaskState.BLOCKED
        via = TaskState.RUNNING if rec.state is TaskState.DISPATCHED else None
        detail = str(msg.payload.get("reason", "")) if outcome is TaskState.BLOCKED else ""
        progress = 1.0 if outcome is TaskState.COMPLETED else rec.progress
        if rec.parent_id is None and not self._hub.wants(rec.org):
            # the common case under load: nobody needs the finished record, only the store
            book.journal_move(
                rec, outcome, via=via, detail=detail, result=msg.payload, progress=progress
            )
            del book.live[rec.id]
        else:
            book.move(rec, outcome, via=via, detail=detail, result=msg.payload, progress=progress)
        book.free_slot(rec)

    def _past_deadline(self, org_slug: str, rec: TaskRecord, msg: TaskMessage) -> None:
        """A result that came once the task's deadline had passed: the task expired, as the
        timeouts decide when they look in time (they look every 0.2 s, and not at all while
        the control plane is down, when an agent it left running to be adopted ran on). Its
        handler has ended, so its slot is free at once."""
        self._unrecorded(org_slug, msg)
        why = "the deadline passed while it ran"
        self._book.end_attempt(rec, stop=False)
        self._book.move(
            rec, TaskState.EXPIRED, detail=why, result={"reason": why, "attempts": rec.attempts}
        )

    def _unrecorded(self, org_slug: str, msg: TaskMessage) -> None:
        """A result its task will never have (the task was stopped, or retried): if it was
        kept in the org's object store, the object is not kept either."""
        if msg.type is MessageType.COMPLETE and objects.reference_in(msg.payload) is not None:
            self.on_unrecorded_object(org_slug, msg.task_id, msg.attempt)

    def _failed(self, rec: TaskRecord, msg: TaskMessage) -> None:
        """The handler raised (or stopped by itself): a failed attempt, for the task's retry
        policy to retry or to end ``failed`` with the error."""
        error = msg.payload.get("error")
        error = error if isinstance(error, dict) else {}
        kind = error.get("type")
        kind = kind[:128] if isinstance(kind, str) and kind else None
        text = error.get("message") or msg.payload.get("reason") or "the handler failed"
        if msg.type is MessageType.CANCELLED:
            kind, text = kind or "Cancelled", "the agent stopped the handler"
        why = f"{kind}: {str(text)[:2000]}" if kind else str(text)[:2000]
        if rec.state is TaskState.DISPATCHED:
            rec = self._book.move(rec, TaskState.RUNNING, progress=rec.progress)
        self._book.fail_attempt(
            rec, why, error_type=kind, retryable=msg.payload.get("retryable") is not False
        )

    async def notify_parent(self, child: TaskRecord) -> None:
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
            await self._bus.deliver(child.org, child.from_agent, message)
        except CorralError as exc:
            log.warning("could not return %s to %s: %s", child.id, child.from_agent, exc.message)

    async def _on_delegate(self, org_slug: str, agent_id: str, msg: TaskMessage) -> None:
        """An agent asks for a child task; the org is the one the server stamped."""
        if msg.task_id in self._book.live:
            return  # the same request delivered twice
        try:
            org = await self._orgs.get(org_slug)
            sender = await self._controller.agents.get(agent_id, org_id=org.id)
        except NotFound:
            return
        body = msg.payload
        inner = body.get("payload", {})
        target = msg.to_agent
        role = target.removeprefix("role:") if target.startswith("role:") else None
        agent = None if role is not None else target
        parent = str(body.get("parent") or "") or self._book.current_task(sender.id)
        asked = body.get("priority")
        parent_rec = self._book.live.get(parent) if parent else None
        plan = org.plan
        wait = self._delegations.take(
            org.id, rate=plan.api_rate_per_second * 10, burst=plan.api_burst * 10
        )
        if wait > 0:
            await self._refuse(
                org.slug,
                sender.id,
                msg.task_id,
                f"delegations are over the {plan.name} plan's rate of "
                f"{plan.api_rate_per_second * 10:g}/s; retry in {wait:.1f}s",
            )
            return
        try:
            if asked is None and parent_rec is not None:
                priority = parent_rec.priority  # a child inherits its parent's priority
            else:
                priority = Priority.parse(str(asked or "normal"))
            if not isinstance(inner, dict):
                raise InvalidInput("delegated payload must be an object")
            if not msg.task_id.startswith(TASK_ID_PREFIX) or len(msg.task_id) > 64:
                raise InvalidInput("child task ids look like task_<hex>")
            await self._submit(
                org,
                role=role,
                agent=agent,
                priority=priority,
                deadline=None,
                requirements=Requirements(),
                payload=inner,
                parent_id=parent,
                from_agent=sender.id,
                task_id=msg.task_id,
                traceparent=msg.traceparent,
            )
        except Conflict:
            return  # recorded before (a redelivery after a restart)
        except CorralError as exc:
            await self._refuse(org.slug, sender.id, msg.task_id, exc.message)

    async def _refuse(self, org_slug: str, agent_id: str, task_id: str, why: str) -> None:
        refusal = TaskMessage(
            task_id,
            "platform",
            agent_id,
            MessageType.BLOCKED,
            {"reason": f"delegation refused: {why}"},
        )
        with contextlib.suppress(CorralError):
            await self._bus.deliver(org_slug, agent_id, refusal)
