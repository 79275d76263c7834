"""The task book: every unfinished task as last decided, the slots agents hold with it, the
waiting line, and the journal moves that make each decision durable.

The dispatcher is the only writer of task state. It decides each transition here, in memory (so
an event delivered twice is recorded once), and the
:class:`~corral.store.task_journal.TaskJournal` commits it, many transitions per transaction;
news of a transition goes out after its commit. Every move passes :meth:`TaskBook.journal_move`,
which holds it to the domain's task state machine.

The book is also the one owner of the task an agent shows as its current one (``currentTask``
in the API): it follows from the slots, is written through the same journal and is asked of
the book (:meth:`TaskBook.current_task`); nobody else writes or reads it to decide anything.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from corral.control.hub import EventHub
from corral.domain.ids import AgentId, OrgId, TaskId
from corral.domain.quantities import parse
from corral.domain.tasks import Requirements, TaskState, check_transition
from corral.domain.tenancy import Organization
from corral.scheduling.scheduler import QueuedTask, Scheduler
from corral.store.task_journal import TaskJournal
from corral.store.tasks import TaskRecord

__all__ = ["ACTIVE", "MAX_ATTEMPTS", "TaskBook", "requirements_of", "row_of"]

#: The states in which a task holds a slot of its agent.
ACTIVE = (TaskState.DISPATCHED, TaskState.RUNNING)
#: Dispatches of one task before it fails for good.
MAX_ATTEMPTS = 5


def requirements_of(rec: TaskRecord) -> Requirements:
    r = rec.requirements
    return Requirements(
        cpu=parse(r["cpu"]) if r.get("cpu") else None,
        memory=parse(r["memory"]) if r.get("memory") else None,
        gpu=int(r.get("gpu", 0)),
    )


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


class TaskBook:
    def __init__(
        self,
        *,
        journal: TaskJournal,
        hub: EventHub,
        scheduler: Scheduler,
        on_capacity: Callable[[str], None],
        on_child_ended: Callable[[TaskRecord], None],
    ) -> None:
        self.journal = journal
        self.hub = hub
        self.scheduler = scheduler
        self._on_capacity = on_capacity  # a slot of an org's agent became free
        self._on_child_ended = on_child_ended  # a delegated task ended: tell its parent
        self.orgs: dict[str, Organization] = {}
        # every unfinished task (queued, dispatched, running), as last decided
        self.live: dict[str, TaskRecord] = {}
        # agent id → the tasks it holds (dispatched or running)
        self.inflight: dict[str, set[str]] = defaultdict(set)
        self.delayed: list[tuple[float, QueuedTask]] = []  # retries waiting for their backoff
        self._shown: dict[str, str | None] = {}  # the task each agent shows as current

    # -- organizations and the waiting line -----------------------------------------------
    def register(self, org: Organization) -> None:
        self.orgs[org.id] = org
        self.scheduler.set_org(
            OrgId(org.id), weight=org.plan.fair_share_weight, plan_boost=org.plan.plan_boost
        )

    def drop_org(self, org_id: str) -> None:
        """Forget an org that is gone, with its unfinished tasks."""
        self.scheduler.drop_org(OrgId(org_id))
        self.orgs.pop(org_id, None)
        for task_id in [t for t, r in self.live.items() if r.org_id == org_id]:
            rec = self.live.pop(task_id)
            if rec.agent_id is not None and rec.agent_id in self.inflight:
                self.inflight[rec.agent_id].discard(task_id)
                if not self.inflight[rec.agent_id]:
                    del self.inflight[rec.agent_id]
        self.delayed = [(t, q) for t, q in self.delayed if q.org != org_id]

    def load(self, rec: TaskRecord) -> None:
        """An unfinished task read from the store at start; work in flight counts against
        its agent."""
        if rec.org_id not in self.orgs:
            return
        self.live[rec.id] = rec
        if rec.state is TaskState.QUEUED:
            self.enqueue(rec)
            return
        if rec.agent_id is not None:
            self.inflight[rec.agent_id].add(rec.id)
        self.scheduler.on_started(OrgId(rec.org_id))

    def adopt_shown(self, agent_id: str, task_id: str) -> None:
        """At start: the agent's stored current task, corrected at once if it holds no such
        task (the book writes it only when it changes)."""
        self._shown[agent_id] = task_id
        self.show_current(agent_id)

    def enqueue(self, rec: TaskRecord, *, not_before: float | None = None) -> None:
        if rec.org_id not in self.orgs or TaskId(rec.id) in self.scheduler:
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
            self.delayed.append((not_before, q))
        else:
            self.scheduler.enqueue(q)

    def release_due(self, now: float) -> None:
        """Retries whose backoff has passed go back to the scheduler."""
        if not self.delayed:
            return
        due = [q for t, q in self.delayed if t <= now]
        self.delayed = [(t, q) for t, q in self.delayed if t > now]
        for q in due:
            if q.id not in self.scheduler:
                self.scheduler.enqueue(q)

    def unqueue(self, task_id: str) -> None:
        """The task waits no more (cancelled)."""
        self.scheduler.remove(TaskId(task_id))
        self.delayed = [(t, q) for t, q in self.delayed if q.id != task_id]

    # -- recording ------------------------------------------------------------------------
    def create(self, rec: TaskRecord) -> None:
        """Append a new task's insert to the journal."""
        self.journal.create(row_of(rec), at=rec.created_at)

    def move(
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
        now = self.journal_move(rec, to, via=via, detail=detail, **fields)
        done = dataclasses.replace(rec, state=to, updated_at=now, **fields)
        if to.is_terminal:
            self.live.pop(rec.id, None)
        else:
            self.live[rec.id] = done
        if self.hub.wants(done.org):
            self.journal.on_commit(lambda: self.publish(done))
        if to.is_terminal and done.parent_id is not None and done.from_agent is not None:
            self.journal.on_commit(lambda: self._on_child_ended(done))
        return done

    def journal_move(
        self, rec: TaskRecord, to: TaskState, *, via: TaskState | None, detail: str, **fields: Any
    ) -> datetime:
        """Append ``rec → (via →) to`` to the journal; returns the time it was decided.

        Raises:
            Conflict: the task state machine has no such edge.
        """
        now = datetime.now(UTC)
        if via is not None:
            check_transition(rec.state, via)
            self.journal.move(rec.id, rec.state, via, at=now)
        check_transition(via or rec.state, to)
        self.journal.move(rec.id, via or rec.state, to, at=now, detail=detail, **fields)
        return now

    async def retry(self, task_id: str, why: str) -> bool:
        """Put a dispatched or running task back in the queue with backoff, or fail it after
        :data:`MAX_ATTEMPTS`; committed before it returns. False if it was neither."""
        rec = self.live.get(task_id)
        if rec is None or rec.state not in ACTIVE:
            return False
        self.free_slot(rec)
        if rec.attempts >= MAX_ATTEMPTS:
            self.move(rec, TaskState.FAILED, detail=f"{why}; gave up")
        else:
            backoff = min(30.0, 0.25 * 2 ** (rec.attempts - 1))
            queued = self.move(
                rec,
                TaskState.QUEUED,
                detail=f"{why}; retry in {backoff:.2f}s",
                agent_id=None,
                progress=None,
                not_before=datetime.now(UTC) + timedelta(seconds=backoff),
            )
            self.enqueue(queued, not_before=time.time() + backoff)
        await self.journal.flush()
        return True

    def progress(self, rec: TaskRecord, progress: float) -> None:
        self.journal.progress(rec.id, progress)
        self.live[rec.id] = dataclasses.replace(rec, progress=progress)

    def publish(self, rec: TaskRecord) -> None:
        if self.hub.wants(rec.org):
            self.hub.publish(rec.org, "task", {"task": rec.to_wire()})

    # -- slots ----------------------------------------------------------------------------
    def take_slot(self, agent_id: str, task_id: str) -> None:
        self.inflight[agent_id].add(task_id)
        self.show_current(agent_id)

    def free_slot(self, rec: TaskRecord) -> None:
        """``rec`` no longer holds a slot of its agent (finished, retried or cancelled)."""
        if rec.agent_id is not None:
            held = self.inflight.get(rec.agent_id)
            if held is not None:
                held.discard(rec.id)
                if not held:
                    del self.inflight[rec.agent_id]
            self.show_current(rec.agent_id)
        self.scheduler.on_finished(OrgId(rec.org_id))
        self._on_capacity(rec.org_id)

    def held_by(self, agent_id: str) -> list[str]:
        """The tasks ``agent_id`` holds now, in id order."""
        return sorted(self.inflight.get(agent_id, ()))

    def holders(self) -> list[str]:
        """Every agent that holds work."""
        return sorted(a for a, held in self.inflight.items() if held)

    def current_task(self, agent_id: str) -> str | None:
        """The task the agent shows as its current one (``None``: it holds none)."""
        return self._shown.get(agent_id)

    def show_current(self, agent_id: str) -> None:
        """Keep the agent's ``currentTask`` in the store pointing at one of its tasks; it is
        written only when that changes, not for every task."""
        held = self.inflight.get(agent_id)
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

    def owned(self, org_slug: str, agent_id: str, task_id: str) -> TaskRecord | None:
        """The unfinished task ``task_id`` if ``agent_id`` of ``org_slug`` holds it now; an
        older attempt's late event, a finished task's duplicate or a forgery get None."""
        rec = self.live.get(task_id)
        if rec is None or rec.org != org_slug or rec.agent_id != agent_id:
            return None
        return rec


def row_of(rec: TaskRecord) -> dict[str, Any]:
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
