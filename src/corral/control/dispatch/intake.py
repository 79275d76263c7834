"""Intake: tasks accepted from submitters (the API, agents that delegate), tasks cancelled, and
the questions the edges ask about tasks.

A task is accepted only once its ``queued`` record is committed, so a submitter that got an
answer can rely on it across a restart; the dispatch loop places it from there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from corral.control.dispatch.book import ACTIVE, TaskBook
from corral.control.lifecycle import Controller
from corral.domain.agents import AgentState
from corral.domain.errors import Conflict, InvalidInput, NotFound
from corral.domain.ids import new_task_id, task_created_at
from corral.domain.tasks import Priority, Requirements, TaskState
from corral.domain.tenancy import Organization
from corral.store.tasks import TaskRecord, TaskRepository, Transition

__all__ = ["Intake", "new_task_id"]


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
    ) -> TaskRecord:
        """Accept a task durably (``queued``), then let the loop place it.

        Raises:
            InvalidInput: neither or both of role/agent.
            NotFound: an unknown agent.
            Conflict: a terminated or failed agent, or a past deadline.
            Conflict: a task of that id exists (a delegation sent twice).
        """
        if (role is None) == (agent is None):
            raise InvalidInput("give exactly one of 'role' or 'agent'")
        if agent is not None:
            try:
                target = await self._controller.agents.get(agent, org_id=org.id)
            except NotFound:
                raise NotFound(
                    f"unknown agent {agent!r} in organization {org.slug!r}",
                    details={"agent": agent},
                ) from None
            if target.state in (AgentState.TERMINATED, AgentState.FAILED):
                raise Conflict(f"agent {agent!r} is {target.state.value}")
        if deadline is not None and deadline <= datetime.now(UTC):
            raise Conflict("the deadline is already past", details={"deadline": str(deadline)})
        reqs: dict[str, Any] = {"gpu": requirements.gpu}
        if requirements.cpu is not None:
            reqs["cpu"] = requirements.cpu.render()
        if requirements.memory is not None:
            reqs["memory"] = requirements.memory.render()
        book = self._book
        task_id = task_id or new_task_id()
        if task_id in book.live:
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
        book.create(rec)
        if task_id in await book.journal.flush():
            raise Conflict(f"task {task_id} exists", details={"task": task_id})
        if org.id not in book.orgs:
            book.register(org)
        book.live[rec.id] = rec
        book.enqueue(rec)
        book.publish(rec)
        self._kick()
        return rec

    async def cancel(self, org: Organization, task_id: str) -> TaskRecord:
        """Cancel a task that has not ended; its agent, if it has one, is told nothing (its
        late result is ignored) and its slot is free at once.

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
        done = book.move(rec, TaskState.CANCELLED, detail="cancelled by user")
        book.unqueue(task_id)
        if rec.state in ACTIVE:
            book.free_slot(rec)
        await book.journal.flush()
        self._kick()
        return done

    # -- questions ------------------------------------------------------------------------
    async def find(
        self, org: Organization, *, states: list[TaskState] | None = None, limit: int = 500
    ) -> list[TaskRecord]:
        return await self._tasks.find(org_id=org.id, states=states, limit=limit)

    async def get(self, org: Organization, task_id: str) -> tuple[TaskRecord, list[Transition]]:
        """The task and its history.

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
        return rec, await self._tasks.history(task_id)
