"""Tasks and their history, as read back from the store. Every write goes through the
dispatcher's task book and its :class:`~corral.store.task_journal.TaskJournal`, which records
each transition as a compare-and-set on the state plus a history row in the same transaction."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Text, and_, cast, delete, func, literal, or_, select, update

from corral.domain import objects
from corral.domain.errors import InvalidInput, NotFound
from corral.domain.plans import PLANS
from corral.domain.policies import DEFAULT_TASK_POLICY, TaskPolicy
from corral.domain.tasks import Priority, TaskFilter, TaskState
from corral.store.db import Database, Unreadable
from corral.store.schema import OrgRow, TaskEventRow, TaskRow

__all__ = ["TaskRecord", "TaskRepository", "Transition", "policy_wire"]

log = logging.getLogger("corral.store")


def _utc(v: datetime | None) -> datetime | None:
    if v is None:
        return None
    return v if v.tzinfo else v.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Transition:
    from_state: str | None
    to_state: str
    at: datetime
    detail: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "from": self.from_state,
            "to": self.to_state,
            "at": self.at.isoformat(),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    seq: int
    org_id: str
    org: str
    plan: str
    role: str | None
    target_agent: str | None
    agent_id: str | None
    parent_id: str | None
    from_agent: str | None
    priority: Priority
    deadline: datetime | None
    requirements: dict[str, Any]
    payload: dict[str, Any]
    result: dict[str, Any] | None
    state: TaskState
    attempts: int
    progress: float | None
    not_before: datetime | None
    created_at: datetime
    updated_at: datetime
    policy: TaskPolicy = DEFAULT_TASK_POLICY
    idempotency_key: str | None = None
    traceparent: str | None = None  # the W3C trace context it was submitted under

    def to_wire(self, history: list[Transition] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "org": self.org,
            "role": self.role,
            "agent": self.target_agent,
            "assignedAgent": self.agent_id,
            "parent": self.parent_id,
            "fromAgent": self.from_agent,
            "priority": self.priority.value,
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "requirements": self.requirements,
            "payload": self.payload,
            "result": self.result,
            "state": self.state.value,
            "attempts": self.attempts,
            "progress": self.progress,
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
            "policy": policy_wire(self.policy),
            "idempotencyKey": self.idempotency_key,
            "traceId": self.traceparent[3:35] if self.traceparent else None,
        }
        if history is not None:
            out["history"] = [t.to_wire() for t in history]
        return out


@functools.lru_cache(maxsize=256)
def policy_wire(policy: TaskPolicy) -> dict[str, Any]:
    """The wire form of ``policy`` (shared: most tasks carry their plan's; do not mutate)."""
    return policy.to_wire()


def _policy(stored: dict[str, Any] | None, plan: str) -> TaskPolicy:
    base = PLANS[plan].task_policy if plan in PLANS else DEFAULT_TASK_POLICY
    if stored is None:
        return base
    return TaskPolicy.from_wire(stored, base=base)


_STATES = frozenset(s.value for s in TaskState)


class _Unloadable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _record(row: TaskRow, slug: str, plan: str) -> TaskRecord:
    for value in (row.requirements, row.payload, row.result, row.policy):
        if isinstance(value, Unreadable):
            raise _Unloadable(value.reason)
    try:
        return _build(row, slug, plan)
    except (ValueError, TypeError, InvalidInput) as exc:
        raise _Unloadable(f"stored row is malformed: {exc}") from exc


def _build(row: TaskRow, slug: str, plan: str) -> TaskRecord:
    return TaskRecord(
        id=row.id,
        seq=row.seq,
        org_id=row.org_id,
        org=slug,
        plan=plan,
        role=row.role,
        target_agent=row.target_agent,
        agent_id=row.agent_id,
        parent_id=row.parent_id,
        from_agent=row.from_agent,
        priority=Priority(row.priority),
        deadline=_utc(row.deadline),
        requirements=row.requirements,
        payload=row.payload,
        result=row.result,
        state=TaskState(row.state),
        attempts=row.attempts,
        progress=row.progress,
        not_before=_utc(row.not_before),
        created_at=_utc(row.created_at) or datetime.now(UTC),
        updated_at=_utc(row.updated_at) or datetime.now(UTC),
        policy=_policy(row.policy, plan),
        idempotency_key=row.idempotency_key,
        traceparent=row.traceparent,
    )


_SELECT = select(TaskRow, OrgRow.slug, OrgRow.plan).join(OrgRow, OrgRow.id == TaskRow.org_id)


class TaskRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        #: rows found unloadable and quarantined since start (see :meth:`_quarantine`)
        self.quarantined = 0

    async def _load(
        self, rows: Iterable[Any], *, states: frozenset[TaskState] | None = None
    ) -> list[TaskRecord]:
        """Records of ``rows``; a row that cannot be loaded is quarantined, and then kept only
        if the query asked for failed tasks."""
        out: list[TaskRecord] = []
        for row in rows:
            try:
                out.append(_record(row[0], row[1], row[2]))
            except _Unloadable as exc:
                await self._quarantine(row[0].id, exc.reason)
                if states is None or TaskState.FAILED in states:
                    out.append(await self.get(row[0].id))
        return out

    async def _quarantine(self, task_id: str, reason: str) -> None:
        """Fail a task whose stored row cannot be loaded, replacing what cannot be read, so
        that no later query trips on it (nor a start-up that rebuilds from the store)."""
        now = datetime.now(UTC)
        detail = f"quarantined: {reason}"
        async with self._db.writing() as s:
            current = (
                await s.execute(select(TaskRow.state).where(TaskRow.id == task_id))
            ).scalar_one_or_none()
            await s.execute(
                update(TaskRow)
                .where(TaskRow.id == task_id)
                .values(
                    state=TaskState.FAILED.value,
                    priority=Priority.NORMAL.value,
                    requirements={},
                    payload={},
                    policy=None,
                    result={"error": detail},
                    updated_at=now,
                )
            )
            s.add(
                TaskEventRow(
                    task_id=task_id,
                    from_state=current if current in _STATES else None,
                    to_state=TaskState.FAILED.value,
                    at=now,
                    detail=detail,
                )
            )
        self.quarantined += 1
        log.warning("task %s quarantined: %s", task_id, reason)

    async def get(self, task_id: str, *, org_id: str | None = None) -> TaskRecord:
        q = _SELECT.where(TaskRow.id == task_id)
        if org_id is not None:
            q = q.where(TaskRow.org_id == org_id)
        async with self._db.sessions() as s:
            row = (await s.execute(q)).first()
        if row is None:
            raise NotFound(f"task {task_id!r} not found", details={"task": task_id})
        loaded = await self._load([row])
        return loaded[0] if loaded else await self.get(task_id, org_id=org_id)

    async def history(self, task_id: str) -> list[Transition]:
        q = select(TaskEventRow).where(TaskEventRow.task_id == task_id).order_by(TaskEventRow.id)
        async with self._db.sessions() as s:
            rows = (await s.execute(q)).scalars().all()
        return [
            Transition(r.from_state, r.to_state, _utc(r.at) or datetime.now(UTC), r.detail)
            for r in rows
        ]

    async def find(
        self,
        *,
        org_id: str | None = None,
        states: Iterable[TaskState] | None = None,
        agent_id: str | None = None,
        limit: int = 1000,
    ) -> list[TaskRecord]:
        q = _SELECT
        if org_id is not None:
            q = q.where(TaskRow.org_id == org_id)
        if states is not None:
            states = list(states)
            q = q.where(TaskRow.state.in_([s.value for s in states]))
        if agent_id is not None:
            q = q.where(TaskRow.agent_id == agent_id)
        async with self._db.sessions() as s:
            rows = (await s.execute(q.order_by(TaskRow.seq).limit(limit))).all()
        return await self._load(rows, states=None if states is None else frozenset(states))

    async def prune(
        self,
        *,
        plan: str,
        finished_before: datetime,
        batch: int = 5000,
        with_objects: list[tuple[str, str, int]] | None = None,
        gone: list[tuple[str, str, str]] | None = None,
    ) -> int:
        """Delete up to ``batch`` tasks of ``plan``'s orgs that finished before
        ``finished_before`` (their history goes with them, by the foreign key's cascade);
        returns how many. ``with_objects`` receives ``(org id, task id, attempts)`` of those
        whose payload or result was kept in the org's object store (their objects are the
        caller's to delete); ``gone`` receives ``(org id, priority, state)`` of every task
        deleted, read by the statement that deleted it.

        One statement with a sub-select, the same text every time: a list of ids as bound
        parameters would be a new prepared statement for every length, and each connection
        keeps its prepared statements (megabytes, over a long run). Everything above is read
        from what that statement returns: the sub-select's ``LIMIT`` has no order, so a second
        statement could name other rows than the delete took (objects then kept forever)."""
        terminal = [s.value for s in TaskState if s.is_terminal]
        orgs = select(OrgRow.id).where(OrgRow.plan == plan)
        doomed = (
            select(TaskRow.id)
            .where(
                TaskRow.org_id.in_(orgs),
                TaskRow.state.in_(terminal),
                TaskRow.updated_at < finished_before,
            )
            .limit(batch)
        )
        marker = f'%"{objects.REF_KEY}"%'
        keeps_objects = or_(
            cast(TaskRow.payload, Text).like(marker), cast(TaskRow.result, Text).like(marker)
        )
        async with self._db.writing() as s:
            result = await s.execute(
                delete(TaskRow)
                .where(TaskRow.id.in_(doomed.scalar_subquery()))
                .returning(
                    TaskRow.org_id,
                    TaskRow.priority,
                    TaskRow.state,
                    TaskRow.id,
                    TaskRow.attempts,
                    keeps_objects if with_objects is not None else literal(False),
                )
                .execution_options(synchronize_session=False)
            )
            rows = result.all()
        deleted = [(o, p, st) for o, p, st, _, _, _ in rows]
        if with_objects is not None:
            with_objects.extend((o, t, int(a or 0)) for o, _, _, t, a, kept in rows if kept)
        if gone is not None:
            gone.extend(deleted)
        return len(deleted)

    async def page(
        self, *, org_id: str, where: TaskFilter, cursor: str | None, limit: int
    ) -> tuple[list[TaskRecord], str | None]:
        """One page of ``org_id``'s tasks, newest first, and the cursor of the next page
        (``None``: this is the last).

        Raises:
            InvalidInput: a cursor this method did not hand out.
        """
        q = _SELECT.where(TaskRow.org_id == org_id)
        if where.states is not None:
            q = q.where(TaskRow.state.in_([s.value for s in where.states]))
        if where.priorities is not None:
            q = q.where(TaskRow.priority.in_([p.value for p in where.priorities]))
        if where.role is not None:
            q = q.where(TaskRow.role == where.role)
        if where.agent is not None:
            q = q.where(or_(TaskRow.agent_id == where.agent, TaskRow.target_agent == where.agent))
        if where.parent is not None:
            q = q.where(TaskRow.parent_id == where.parent)
        if cursor is not None:
            seq, task_id = _read_cursor(cursor)
            q = q.where(or_(TaskRow.seq < seq, and_(TaskRow.seq == seq, TaskRow.id < task_id)))
        q = q.order_by(TaskRow.seq.desc(), TaskRow.id.desc()).limit(limit + 1)
        async with self._db.sessions() as s:
            rows = (await s.execute(q)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        records = await self._load(rows)
        last = rows[-1][0] if more and rows else None
        return records, None if last is None else f"{last.seq}.{last.id}"

    async def by_idempotency_key(self, org_id: str, key: str) -> TaskRecord | None:
        """The task ``org_id`` submitted with ``key``, if any."""
        q = _SELECT.where(TaskRow.org_id == org_id, TaskRow.idempotency_key == key)
        async with self._db.sessions() as s:
            row = (await s.execute(q)).first()
        if row is None:
            return None
        loaded = await self._load([row])
        return loaded[0] if loaded else None

    async def by_idempotency_keys(self, org_id: str, keys: list[str]) -> dict[str, TaskRecord]:
        """The tasks ``org_id`` submitted with any of ``keys``, by key."""
        if not keys:
            return {}
        q = _SELECT.where(TaskRow.org_id == org_id, TaskRow.idempotency_key.in_(keys))
        async with self._db.sessions() as s:
            rows = (await s.execute(q)).all()
        return {r.idempotency_key: r for r in await self._load(list(rows)) if r.idempotency_key}

    async def count_finished(self, *, before: datetime) -> list[tuple[str, str, str, int]]:
        """(org id, priority, state, count) of the finished tasks last updated at or before
        ``before``: read once when the dispatcher takes over, which counts the rest as they
        finish (O(history), once, in the background)."""
        terminal = [s.value for s in TaskState if s.is_terminal]
        q = (
            select(TaskRow.org_id, TaskRow.priority, TaskRow.state, func.count())
            .where(TaskRow.state.in_(terminal), TaskRow.updated_at <= before)
            .group_by(TaskRow.org_id, TaskRow.priority, TaskRow.state)
        )
        async with self._db.sessions() as s:
            rows = (await s.execute(q)).all()
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def count_by_org(self) -> list[tuple[str, str, str, int]]:
        """(org id, priority, state, count) of every stored task."""
        q = select(TaskRow.org_id, TaskRow.priority, TaskRow.state, func.count()).group_by(
            TaskRow.org_id, TaskRow.priority, TaskRow.state
        )
        async with self._db.sessions() as s:
            rows = (await s.execute(q)).all()
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def count_by_state(self) -> list[tuple[str, str, str, str, int]]:
        """(org slug, plan, priority, state, count) for metrics."""
        q = (
            select(OrgRow.slug, OrgRow.plan, TaskRow.priority, TaskRow.state, func.count())
            .join(OrgRow, OrgRow.id == TaskRow.org_id)
            .group_by(OrgRow.slug, OrgRow.plan, TaskRow.priority, TaskRow.state)
        )
        async with self._db.sessions() as s:
            rows = (await s.execute(q)).all()
        return [(r[0], r[1], r[2], r[3], int(r[4])) for r in rows]


def _read_cursor(cursor: str) -> tuple[int, str]:
    seq, _, task_id = cursor.partition(".")
    if not seq.isdigit() or not task_id or len(cursor) > 100:
        raise InvalidInput(
            "the cursor is not one a listing handed out", details={"cursor": cursor[:100]}
        )
    return int(seq), task_id
