"""Batched task writes: many tasks' inserts and transitions in one transaction.

The dispatcher keeps every unfinished task in memory and decides each transition there (it is
the only writer of task state); the journal makes those decisions durable. Writes are appended
synchronously and committed by one flusher: whatever accumulated while the previous commit ran
goes into the next transaction — a group commit. At idle a write costs one short transaction;
under load thousands share one. A caller that must not go on before its writes are durable (a
task accepted by the API, a dispatch before its message leaves) awaits :meth:`flush`.

Within a batch the writes of one task are folded into one row operation: an insert carries the
states reached before it committed, and an update goes from the state the task had when the
batch began (the compare-and-set guard) to the last one. Every transition still gets its own
history row. If a batch fails on a constraint, each task's writes are retried alone so that one
bad row costs only itself; the ids that failed are reported by :meth:`flush`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from corral.domain.errors import Unavailable
from corral.domain.tasks import TaskState
from corral.store.db import Database
from corral.store.schema import AgentRow, TaskEventRow, TaskRow

__all__ = ["TaskJournal"]

log = logging.getLogger("corral.store.journal")

_TASKS: Table = TaskRow.__table__  # type: ignore[assignment]
_EVENTS: Table = TaskEventRow.__table__  # type: ignore[assignment]
_AGENTS: Table = AgentRow.__table__  # type: ignore[assignment]


@dataclass(slots=True)
class _Write:
    """What one batch does to one task."""

    insert: dict[str, Any] | None = None  # the whole row, when the task is new in this batch
    guard: str | None = None  # the state the row must be in for the update to apply
    fields: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _Batch:
    writes: dict[str, _Write] = field(default_factory=dict)
    busy: dict[str, tuple[str | None, datetime]] = field(default_factory=dict)
    after: list[Callable[[], None]] = field(default_factory=list)
    done: asyncio.Future[set[str]] | None = None

    def __len__(self) -> int:
        return len(self.writes) + len(self.busy) + len(self.after)


class TaskJournal:
    """Group-committed task writes. ``await close()`` commits what is left."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._batch = _Batch()
        self._runner: asyncio.Task[None] | None = None
        self._committing: asyncio.Future[set[str]] | None = None
        self._closed = False
        self.commits = 0  # transactions committed, for metrics and tests
        self.rows = 0  # task writes committed

    # -- appending ------------------------------------------------------------------------
    def create(self, row: dict[str, Any], *, at: datetime) -> None:
        """A new task (``row`` holds every column of ``tasks``) and its ``queued`` history."""
        w = self._write(row["id"])
        w.insert = dict(row)
        w.history.append(_history(row["id"], None, row["state"], at, ""))
        self._wake()

    def move(
        self,
        task_id: str,
        frm: TaskState,
        to: TaskState,
        *,
        at: datetime,
        detail: str = "",
        **fields: Any,
    ) -> None:
        """Record ``frm → to`` (plus ``fields``) for a task whose state is ``frm``."""
        w = self._write(task_id)
        values = {**fields, "state": to.value, "updated_at": at}
        if w.insert is not None:
            w.insert.update(values)
        else:
            if w.guard is None:
                w.guard = frm.value
            w.fields.update(values)
        w.history.append(_history(task_id, frm.value, to.value, at, detail))
        self._wake()

    def progress(self, task_id: str, progress: float) -> None:
        """The task's progress, kept only while it is running."""
        w = self._write(task_id)
        if w.insert is not None:
            w.insert["progress"] = progress
        else:
            if w.guard is None:
                w.guard = TaskState.RUNNING.value
            w.fields["progress"] = progress
        self._wake()

    def agent_busy(self, agent_id: str, task_id: str | None, *, at: datetime) -> None:
        """The task an agent shows as its current one (``None``: it has none)."""
        self._batch.busy[agent_id] = (task_id, at)
        self._wake()

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once what was appended so far is committed (not if it fails):
        news of a transition goes out only when the transition is in the store."""
        self._batch.after.append(callback)
        self._wake()

    def _write(self, task_id: str) -> _Write:
        w = self._batch.writes.get(task_id)
        if w is None:
            w = self._batch.writes[task_id] = _Write()
        return w

    # -- committing -----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._batch)

    async def flush(self) -> set[str]:
        """Wait until everything appended so far is committed; returns the ids of tasks whose
        writes were refused (a constraint), which are not in the store.

        Raises:
            Unavailable: the store failed; nothing of the batch was committed.
        """
        if len(self._batch) == 0:
            if self._committing is not None and not self._committing.done():
                return await asyncio.shield(self._committing)
            return set()
        done = self._batch.done
        if done is None:
            done = self._batch.done = asyncio.get_running_loop().create_future()
        self._wake()
        return await asyncio.shield(done)

    def _wake(self) -> None:
        if self._closed:
            raise Unavailable("the task journal is closed")
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name="corral-task-journal"
            )

    async def _run(self) -> None:
        while len(self._batch):
            batch, self._batch = self._batch, _Batch()
            done = batch.done or asyncio.get_running_loop().create_future()
            self._committing = done
            try:
                failed = await self._commit(batch)
            except BaseException as exc:
                if not done.done():
                    if isinstance(exc, asyncio.CancelledError):
                        done.cancel()
                    else:
                        done.set_exception(exc)
                        done.exception()  # retrieved: a batch nobody awaited is only logged
                        log.error("a batch of %d task writes failed: %s", len(batch), exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            done.set_result(failed)
            for callback in batch.after:
                try:
                    callback()
                except Exception:
                    log.exception("a callback after a commit of task writes failed")

    async def _commit(self, batch: _Batch) -> set[str]:
        if not batch.writes and not batch.busy:
            return set()
        try:
            async with self._db.engine.begin() as conn:
                await _apply(conn, list(batch.writes.items()), batch.busy)
            self.commits += 1
            self.rows += len(batch.writes)
            return set()
        except IntegrityError:
            if len(batch.writes) <= 1:
                return set(batch.writes)
        except SQLAlchemyError as exc:
            raise Unavailable(f"the store refused a batch of task writes: {exc}") from exc
        # one bad row: commit each task alone, so that only it fails
        failed: set[str] = set()
        for item in batch.writes.items():
            try:
                async with self._db.engine.begin() as conn:
                    await _apply(conn, [item], {})
            except IntegrityError as exc:
                log.warning("task %s not recorded: %s", item[0], exc.orig)
                failed.add(item[0])
            except SQLAlchemyError as exc:
                raise Unavailable(f"the store refused task writes: {exc}") from exc
        if batch.busy:
            async with self._db.engine.begin() as conn:
                await _apply(conn, [], batch.busy)
        self.commits += 1
        self.rows += len(batch.writes) - len(failed)
        return failed

    async def close(self) -> None:
        """Commit what is pending, then refuse new writes."""
        if len(self._batch):
            await self.flush()
        if self._runner is not None and not self._runner.done():
            await self._runner
        self._closed = True


def _history(task_id: str, frm: str | None, to: str, at: datetime, detail: str) -> dict[str, Any]:
    return {"task_id": task_id, "from_state": frm, "to_state": to, "at": at, "detail": detail}


async def _apply(
    conn: AsyncConnection,
    writes: list[tuple[str, _Write]],
    busy: dict[str, tuple[str | None, datetime]],
) -> None:
    inserts = [w.insert for _, w in writes if w.insert is not None]
    if inserts:
        await conn.execute(insert(_TASKS), inserts)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for task_id, w in writes:
        if w.insert is None and w.fields:
            keys = tuple(sorted(w.fields))
            groups[keys].append(
                {"k_id": task_id, "k_guard": w.guard, **{f"v_{k}": v for k, v in w.fields.items()}}
            )
    for keys, params in groups.items():
        stmt = (
            update(_TASKS)
            .where(_TASKS.c.id == bindparam("k_id"), _TASKS.c.state == bindparam("k_guard"))
            .values({k: bindparam(f"v_{k}", type_=_TASKS.c[k].type) for k in keys})
        )
        result = await conn.execute(stmt, params)
        applied = result.rowcount
        if applied is not None and 0 <= applied < len(params):
            log.warning(
                "%d of %d task updates found the task changed by another writer",
                len(params) - applied,
                len(params),
            )
    history = [h for _, w in writes for h in w.history]
    if history:
        await conn.execute(insert(_EVENTS), history)
    if busy:
        await conn.execute(
            update(_AGENTS)
            .where(_AGENTS.c.id == bindparam("k_id"))
            .values(busy_task=bindparam("v_busy"), updated_at=bindparam("v_at")),
            [{"k_id": a, "v_busy": t, "v_at": at} for a, (t, at) in busy.items()],
        )
