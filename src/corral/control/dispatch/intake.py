"""Intake: tasks accepted from submitters (the API, agents that delegate), tasks cancelled, and
the questions the edges ask about tasks.

A task is accepted only once its ``queued`` record is committed, so a submitter that got an
answer can rely on it across a restart; the dispatch loop places it from there. A submit that
carries an idempotency key is accepted once: the same key (in the same org) answers with the
task it created, however often it is sent, which the store's unique index holds to even for
submits that race.

A cancel ends the task for its submitter at once; a running handler is asked to stop, and its
agent's slot stays held until it has. Cancelling a task cancels the tasks it delegated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from corral.control import tracing
from corral.control.dispatch.book import ACTIVE, TaskBook
from corral.control.lifecycle import Controller
from corral.domain.agents import AgentState
from corral.domain.errors import Conflict, CorralError, InvalidInput, NotFound, QuotaExceeded
from corral.domain.ids import OrgId, TaskId, new_task_id, task_created_at
from corral.domain.policies import TaskPolicy
from corral.domain.tasks import Priority, Requirements, TaskFilter, TaskState
from corral.domain.tenancy import Organization
from corral.store.tasks import TaskRecord, TaskRepository, Transition

__all__ = ["Intake", "Submission", "new_task_id"]


@dataclass(frozen=True, slots=True)
class Submission:
    """One task asked for: what :meth:`Intake.submit` takes, for :meth:`Intake.submit_many`."""

    role: str | None
    agent: str | None
    priority: Priority
    deadline: datetime | None
    requirements: Requirements
    payload: dict[str, Any]
    parent_id: str | None = None
    from_agent: str | None = None
    task_id: str | None = None
    policy: TaskPolicy | None = None
    idempotency_key: str | None = None
    traceparent: str | None = None
    received_at: datetime | None = None


class Intake:
    def __init__(
        self,
        *,
        book: TaskBook,
        tasks: TaskRepository,
        controller: Controller,
        kick: Callable[[], None],
        retention: Callable[[Organization], float] = lambda org: org.plan.task_retention_seconds,
    ) -> None:
        self._retention = retention
        self._book = book
        self._tasks = tasks
        self._controller = controller
        self._kick = kick

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
        """Accept a task durably (``queued``), then let the loop place it.

        Args:
            policy: its retry policy and timeouts; its org's plan's defaults if not given.
            idempotency_key: a key only this submit carries: if a task of ``org`` was
                accepted with it, that task is the answer and nothing new is created.
            traceparent: the trace it joins (a delegating handler's span); the span
                active now if not given.
            received_at: when the request asking for it arrived: a deadline is refused as
                past only if it was past then (not when this platform was slow to get here).

        Raises:
            InvalidInput: neither or both of role/agent.
            NotFound: an unknown agent.
            Conflict: a terminated or failed agent, or a past deadline.
            Conflict: a task of that id exists (a delegation sent twice).
            QuotaExceeded: the org has as many tasks waiting as its plan allows.
        """
        one = Submission(
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
        return (await self.submit_many(org, [one]))[0]

    async def submit_many(self, org: Organization, subs: Sequence[Submission]) -> list[TaskRecord]:
        """Accept tasks of one org together: every one is checked before any is accepted (an
        error names the item, from 0), and they are committed together. The answer is in the
        order asked; a submission whose idempotency key names a task made before (or made by
        a submit that raced in) answers with that task.

        Raises:
            InvalidInput: a submission names neither or both of role/agent, or two carry the
                same idempotency key or task id (nothing is accepted).
            NotFound, Conflict, QuotaExceeded: as :meth:`submit`, for any one of them, or for
                the whole when they do not fit in the org's queue (nothing is accepted).
            Conflict: a given task id that the store already holds, found only as it commits
                (a delegation sent twice): the others are accepted.
        """
        keys = [s.idempotency_key for s in subs if s.idempotency_key is not None]
        ids = [s.task_id for s in subs if s.task_id is not None]
        if len(set(keys)) != len(keys) or len(set(ids)) != len(ids):
            raise InvalidInput("two tasks of one submission carry the same idempotency key or id")
        known = await self._tasks.by_idempotency_keys(org.id, keys) if keys else {}
        fresh = [s for s in subs if s.idempotency_key not in known]
        for n, s in enumerate(subs):
            if s.idempotency_key not in known and (s.role is None) == (s.agent is None):
                raise InvalidInput("give exactly one of 'role' or 'agent'").of_item(n, len(subs))
        self._check_room(org, len(fresh))
        recs: dict[int, TaskRecord] = {}
        for n, s in enumerate(subs):
            if s.idempotency_key in known:
                continue
            try:
                recs[n] = await self._record(org, s)
            except CorralError as exc:
                raise exc.of_item(n, len(subs)) from None
        book = self._book
        for rec in recs.values():
            book.create(rec)
        refused = await book.journal.flush() if recs else set()
        if org.id not in book.orgs:
            book.register(org)
        answers: list[TaskRecord] = []
        lost: list[str] = []
        for n, s in enumerate(subs):
            if n not in recs:
                answers.append(known[s.idempotency_key or ""])
                continue
            rec = recs[n]
            if rec.id in refused:
                book.counts.uncreated(rec.org_id, rec.priority.value, rec.state.value)
                again = None  # the same key raced in: its task is the answer
                if s.idempotency_key is not None:
                    again = await self._tasks.by_idempotency_key(org.id, s.idempotency_key)
                if again is None:
                    lost.append(rec.id)
                else:
                    answers.append(again)
            else:
                book.live[rec.id] = rec
                book.enqueue(rec)
                book.publish(rec)
                answers.append(rec)
        if answers:
            self._kick()
        if lost:
            raise Conflict(f"task {lost[0]} exists", details={"task": lost[0]})
        return answers

    def _check_room(self, org: Organization, more: int) -> None:
        waiting = self._book.scheduler.queued(OrgId(org.id))
        limit = org.plan.max_queued_tasks
        if more and waiting + more > limit:
            asked = f" and {more} more were submitted" if more > 1 else ""
            raise QuotaExceeded(
                f"organization {org.slug!r} has {waiting} tasks waiting{asked}; its "
                f"{org.plan.name} plan allows {limit} at once",
                details={"waiting": waiting, "submitted": more, "limit": limit},
            )

    async def _record(self, org: Organization, s: Submission) -> TaskRecord:
        """The ``queued`` record of ``s``, once it is known to be acceptable."""
        agent = s.agent
        if agent is not None:
            try:
                target = await self._controller.agents.resolve(agent, org_id=org.id)
            except NotFound:
                raise NotFound(
                    f"unknown agent {agent!r} in organization {org.slug!r}",
                    details={"agent": agent},
                ) from None
            if target.state in (AgentState.TERMINATED, AgentState.FAILED):
                raise Conflict(f"agent {agent!r} is {target.state.value}")
            agent = target.id  # it may have been named
        deadline = s.deadline
        if deadline is not None and deadline <= (s.received_at or datetime.now(UTC)):
            raise Conflict("the deadline is already past", details={"deadline": str(deadline)})
        reqs: dict[str, Any] = {"gpu": s.requirements.gpu}
        if s.requirements.cpu is not None:
            reqs["cpu"] = s.requirements.cpu.render()
        if s.requirements.memory is not None:
            reqs["memory"] = s.requirements.memory.render()
        task_id = s.task_id or new_task_id()
        if task_id in self._book.live:
            raise Conflict(f"task {task_id} exists", details={"task": task_id})
        now = datetime.now(UTC)
        return TaskRecord(
            id=task_id,
            seq=time.time_ns(),
            org_id=org.id,
            org=org.slug,
            plan=org.plan.name,
            role=s.role,
            target_agent=agent,
            agent_id=None,
            parent_id=s.parent_id,
            from_agent=s.from_agent,
            priority=s.priority,
            deadline=deadline,
            requirements=reqs,
            payload=s.payload,
            result=None,
            state=TaskState.QUEUED,
            attempts=0,
            progress=None,
            not_before=None,
            created_at=now,
            updated_at=now,
            policy=s.policy or org.plan.task_policy,
            idempotency_key=s.idempotency_key,
            traceparent=s.traceparent or tracing.current_traceparent(),
        )

    async def cancel(self, org: Organization, task_id: str) -> TaskRecord:
        """Cancel a task that has not ended, and the unfinished tasks it delegated. A running
        handler is asked to stop; its agent's slot is held until the agent says it ended (its
        late result is ignored).

        Raises:
            NotFound: no such task in ``org``.
            Conflict: the task already ended.
        """
        book = self._book
        rec = book.live.get(task_id)
        if rec is None or rec.org_id != org.id:
            stored = await self._tasks.get(task_id, org_id=org.id)
            raise Conflict(
                f"task {task_id} is already {stored.state.value}",
                details={"task": task_id, "state": stored.state.value},
            )
        done = self._cancel(rec, "cancelled by user")
        await book.journal.flush()
        self._kick()
        return done

    def _cancel(self, rec: TaskRecord, why: str) -> TaskRecord:
        book = self._book
        if rec.state in ACTIVE:
            book.end_attempt(rec, stop=True)
        book.unqueue(rec.id)
        done = book.move(rec, TaskState.CANCELLED, detail=why, result={"reason": why})
        children = [c for c in book.live.values() if c.parent_id == rec.id]
        for child in children:
            if child.id in book.live:
                self._cancel(child, f"its parent {rec.id} was cancelled")
        return done

    # -- questions ------------------------------------------------------------------------
    async def find(
        self,
        org: Organization,
        *,
        where: TaskFilter,
        cursor: str | None = None,
        limit: int = 500,
    ) -> tuple[list[TaskRecord], str | None]:
        """A page of ``org``'s tasks, newest first, and the cursor of the next page."""
        return await self._tasks.page(org_id=org.id, where=where, cursor=cursor, limit=limit)

    async def get(
        self, org: Organization, task_id: str
    ) -> tuple[TaskRecord, list[Transition], str | None]:
        """The task, its history, and why it waits (``None``: it does not).

        Raises:
            NotFound: no such task in ``org``; it says so if the task may have been pruned.
        """
        try:
            rec = await self._tasks.get(task_id, org_id=org.id)
        except NotFound as exc:
            created = task_created_at(task_id)
            kept = self._retention(org)
            if created is not None and created < time.time() - kept:
                raise NotFound(
                    f"task {task_id!r} not found: finished tasks are pruned "
                    f"{kept / 86400:g} days after they finish on the {org.plan.name} plan",
                    details={"task": task_id, "pruned": True, "retentionSeconds": kept},
                ) from exc
            raise
        return rec, await self._tasks.history(task_id), self.why_waiting(task_id)

    def why_waiting(self, task_id: str) -> str | None:
        """Why a queued task is not dispatched yet, in words a user can act on."""
        book = self._book
        rec = book.live.get(task_id)
        if rec is None or rec.state is not TaskState.QUEUED:
            return None
        for at, q in book.delayed:
            if q.id == task_id:
                if task_id in book.stopping:
                    return "its previous attempt's handler is being stopped"
                wait = max(0.0, at - time.time())
                return f"retrying after a backoff of {wait:.1f}s more"
        return book.scheduler.why_waiting(TaskId(task_id))
