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

**Failed attempts** (:meth:`TaskBook.fail_attempt`) go back to the queue after the backoff of
the task's retry policy, or end the task ``failed`` with the reason and the attempts made — a
dead letter never waits forever. **Stopped handlers**: a task cancelled, expired or timed out
while an agent runs it has ended for its submitter at once, but its slot stays held
(:attr:`TaskBook.stopping`) until the agent says the handler ended, or the agent is lost; a
retry of it waits for that too, so no agent ever runs two attempts of one task.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from corral.control.dispatch.counts import TaskCounts
from corral.control.hub import EventHub
from corral.domain.ids import AgentId, OrgId, TaskId
from corral.domain.quantities import parse
from corral.domain.tasks import Requirements, TaskState, check_transition
from corral.domain.tenancy import Organization
from corral.scheduling.scheduler import QueuedTask, Scheduler
from corral.store.task_journal import TaskJournal
from corral.store.tasks import TaskRecord, policy_wire

__all__ = ["ACTIVE", "Stopping", "TaskBook", "requirements_of", "row_of"]

#: The states in which a task holds a slot of its agent.
ACTIVE = (TaskState.DISPATCHED, TaskState.RUNNING)
UNTRIED_BACKOFF = 0.5  # seconds before a task whose delivery the bus dropped is placed again


@dataclasses.dataclass(slots=True)
class Stopping:
    """A task whose handler was asked to stop; its slot is held until the agent says so."""

    agent_id: str
    org_id: str
    until: float  # monotonic: past it, the platform stops the work itself
    overdue: bool = False  # the platform was asked to stop the work already


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
        on_stop: Callable[[TaskRecord], None] = lambda rec: None,
        stop_grace: float = 10.0,
    ) -> None:
        self.journal = journal
        self.hub = hub
        self.scheduler = scheduler
        self._on_capacity = on_capacity  # a slot of an org's agent became free
        self._on_child_ended = on_child_ended  # a delegated task ended: tell its parent
        self._on_stop = on_stop  # ask the agent to stop a task's handler
        self.stop_grace = stop_grace  # seconds a handler has to end once asked
        self.orgs: dict[str, Organization] = {}
        #: how many tasks the store holds, by org, priority and state (for /metrics)
        self.counts = TaskCounts()
        # every unfinished task (queued, dispatched, running), as last decided
        self.live: dict[str, TaskRecord] = {}
        # agent id → the tasks it holds (dispatched or running)
        self.inflight: dict[str, set[str]] = defaultdict(set)
        self.delayed: list[tuple[float, QueuedTask]] = []  # retries waiting for their backoff
        self._shown: dict[str, str | None] = {}  # the task each agent shows as current
        self.stopping: dict[str, Stopping] = {}  # task id → the handler being stopped
        self.started: dict[str, float] = {}  # task id → when its attempt was dispatched
        self.beats: dict[str, float] = {}  # task id → its last progress report
        self.last_active: dict[str, float] = {}  # agent id → when it last took or ended work

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
        self.counts.drop_org(org_id)
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
        self.counts.created(rec.org_id, rec.priority.value, rec.state.value)
        if rec.state is TaskState.QUEUED:
            self.enqueue(rec)
            return
        if rec.agent_id is not None:
            self.inflight[rec.agent_id].add(rec.id)
            self.started[rec.id] = time.time()
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
        if (not_before is not None and not_before > time.time()) or rec.id in self.stopping:
            self.delayed.append((not_before or 0.0, q))
        else:
            self.scheduler.enqueue(q)
            self.hub.series.depth(rec.org, self.scheduler.queued(q.org))

    def release_due(self, now: float) -> None:
        """Retries whose backoff has passed (and whose previous attempt's handler has ended)
        go back to the scheduler."""
        if not self.delayed:
            return
        due = [q for t, q in self.delayed if t <= now and q.id not in self.stopping]
        if not due:
            return
        self.delayed = [(t, q) for t, q in self.delayed if t > now or q.id in self.stopping]
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
        self.counts.created(rec.org_id, rec.priority.value, rec.state.value)

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
        if rec.state is TaskState.QUEUED:
            self.hub.series.depth(done.org, self.scheduler.queued(OrgId(rec.org_id)))
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
        # ``fields`` never change a task's org or priority
        self.counts.moved(rec.org_id, rec.priority.value, rec.state.value, to.value)
        if to.is_terminal:  # the console's charts: what ended, how long after submission
            self.hub.series.ended(rec.org, (now - rec.created_at).total_seconds())
        return now

    async def retry(self, task_id: str, why: str, *, error_type: str | None = None) -> bool:
        """:meth:`fail_attempt` for a dispatched or running task whose handler is not running
        (its agent is lost, its delivery failed); committed before it returns. False if the
        task was neither dispatched nor running."""
        rec = self.live.get(task_id)
        if rec is None or rec.state not in ACTIVE:
            return False
        self.fail_attempt(rec, why, error_type=error_type)
        await self.journal.flush()
        return True

    async def requeue_untried(self, task_id: str, why: str) -> bool:
        """A dispatched task whose delivery failed because the bus did not answer: back to
        the queue at once, its attempt not counted (the handler never ran, and the message,
        if it arrives late, is stored once: a redelivery of the same attempt is dropped).
        Committed before it returns; False if the task was not dispatched."""
        rec = self.live.get(task_id)
        if rec is None or rec.state is not TaskState.DISPATCHED:
            return False
        self.end_attempt(rec, stop=False)
        queued = self.move(
            rec,
            TaskState.QUEUED,
            detail=f"{why}; not counted as an attempt",
            agent_id=None,
            progress=None,
            attempts=max(0, rec.attempts - 1),
            not_before=datetime.now(UTC) + timedelta(seconds=UNTRIED_BACKOFF),
        )
        self.enqueue(queued, not_before=time.time() + UNTRIED_BACKOFF)
        await self.journal.flush()
        return True

    def fail_attempt(
        self,
        rec: TaskRecord,
        why: str,
        *,
        error_type: str | None = None,
        retryable: bool = True,
        stop: bool = False,
    ) -> TaskRecord:
        """The attempt of ``rec`` (dispatched or running) failed: back to the queue after the
        backoff of its retry policy, or ``failed`` for good with the reason and the attempts
        (a non-retryable error, or its attempts spent). With ``stop`` its handler may still
        run: the agent is asked to stop it and the slot stays held until it has."""
        self.end_attempt(rec, stop=stop)
        policy = rec.policy.retry
        if not retryable or policy.gives_up(rec.attempts, error_type):
            final = not retryable or error_type in policy.non_retryable
            tried = f"{rec.attempts} attempt{'s' if rec.attempts != 1 else ''}"
            gave_up = f"not retryable, after {tried}" if final else f"after {tried}"
            error = {"reason": why, "errorType": error_type, "attempts": rec.attempts}
            return self.move(
                rec, TaskState.FAILED, detail=f"{why}; gave up ({gave_up})", result=error
            )
        backoff = policy.backoff(rec.attempts)
        queued = self.move(
            rec,
            TaskState.QUEUED,
            detail=f"{why}; retry in {backoff:.2f}s (attempt {rec.attempts} of "
            f"{policy.max_attempts})",
            agent_id=None,
            progress=None,
            not_before=datetime.now(UTC) + timedelta(seconds=backoff),
        )
        self.enqueue(queued, not_before=time.time() + backoff)
        return queued

    def end_attempt(self, rec: TaskRecord, *, stop: bool) -> None:
        """``rec``'s attempt is over for the platform: its slot is free now, or (``stop``)
        once its agent says the handler ended."""
        if stop and rec.agent_id is not None:
            self.stopping[rec.id] = Stopping(
                rec.agent_id, rec.org_id, time.monotonic() + self.stop_grace
            )
            self.journal.on_commit(lambda: self._on_stop(rec))
        else:
            self.free_slot(rec)

    def handler_ended(self, agent_id: str, task_id: str) -> bool:
        """The agent says the handler of a stopped task ended: its slot is free."""
        held = self.stopping.get(task_id)
        if held is None or held.agent_id != agent_id:
            return False
        del self.stopping[task_id]
        self._release(agent_id, held.org_id, task_id)
        return True

    def release_stopping(self, agent_id: str) -> None:
        """The agent is gone: the handlers it was stopping are gone with it."""
        for task_id in [t for t, s in self.stopping.items() if s.agent_id == agent_id]:
            self.handler_ended(agent_id, task_id)

    def fail_pinned(self, agent_id: str, why: str) -> int:
        """Fail the unfinished tasks sent to ``agent_id`` alone (it is gone for good)."""
        pinned = [r for r in self.live.values() if r.target_agent == agent_id]
        for rec in pinned:
            if rec.state in ACTIVE:
                self.end_attempt(rec, stop=False)
            self.unqueue(rec.id)
            self.move(
                rec,
                TaskState.FAILED,
                detail=why,
                result={"reason": why, "errorType": "AgentGone", "attempts": rec.attempts},
            )
        return len(pinned)

    def progress(self, rec: TaskRecord, progress: float) -> None:
        self.journal.progress(rec.id, progress)
        self.live[rec.id] = dataclasses.replace(rec, progress=progress)
        self.beats[rec.id] = time.time()

    def publish(self, rec: TaskRecord) -> None:
        if self.hub.wants(rec.org):
            self.hub.publish(rec.org, "task", {"task": rec.to_wire()})

    # -- slots ----------------------------------------------------------------------------
    def take_slot(self, agent_id: str, task_id: str) -> None:
        self.inflight[agent_id].add(task_id)
        now = time.time()
        self.started[task_id] = now
        self.last_active[agent_id] = now
        self.show_current(agent_id)

    def free_slot(self, rec: TaskRecord) -> None:
        """``rec`` no longer holds a slot of its agent (finished, retried or cancelled)."""
        if rec.agent_id is None:
            self.scheduler.on_finished(OrgId(rec.org_id))
            self._on_capacity(rec.org_id)
        else:
            self._release(rec.agent_id, rec.org_id, rec.id)

    def _release(self, agent_id: str, org_id: str, task_id: str) -> None:
        held = self.inflight.get(agent_id)
        if held is not None:
            held.discard(task_id)
            if not held:
                del self.inflight[agent_id]
        self.started.pop(task_id, None)
        self.beats.pop(task_id, None)
        self.last_active[agent_id] = time.time()
        self.show_current(agent_id)
        self.scheduler.on_finished(OrgId(org_id))
        self._on_capacity(org_id)

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
        "policy": policy_wire(rec.policy),
        "idempotency_key": rec.idempotency_key,
        "traceparent": rec.traceparent,
    }
