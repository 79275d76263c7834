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

On SQLite the journal writes through its own connection in one worker thread, a whole batch per
hop with plain ``executemany`` (a short transaction costs about a tenth of the same through the
async ORM); on PostgreSQL through an asyncpg connection of its own. Values are stored exactly as
the ORM stores them (the journal tests read them back through the ORM on both).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from corral.domain.errors import Deposed, Unavailable
from corral.domain.tasks import TaskState
from corral.store.db import Database
from corral.store.journal_writers import (
    PostgresWriter,
    Refused,
    SqliteWriter,
    Write,
    Writer,
    history_row,
)

__all__ = ["TaskJournal"]

log = logging.getLogger("corral.store.journal")


@dataclass(slots=True)
class _Batch:
    writes: dict[str, Write] = field(default_factory=dict)
    busy: dict[str, tuple[str | None, datetime]] = field(default_factory=dict)
    after: list[Callable[[], None]] = field(default_factory=list)
    done: asyncio.Future[set[str]] | None = None
    split: bool = False  # committed task by task (a constraint refused the whole)
    settled: set[str] = field(default_factory=set)  # tasks committed or refused, when split
    refused: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.writes) + len(self.busy) + len(self.after)


class TaskJournal:
    """Group-committed task writes. ``await close()`` commits what is left."""

    def __init__(
        self,
        db: Database,
        *,
        epoch: int | None = None,
        on_deposed: Callable[[Deposed], None] | None = None,
    ) -> None:
        """With ``epoch`` (PostgreSQL, a replica leading under a lease) every commit is fenced
        by it: once another replica leads, the first refused commit calls ``on_deposed`` and
        every write from then on raises :class:`Deposed` (nothing more reaches the store)."""
        self._writer: Writer = (
            SqliteWriter(db.url.split(":///", 1)[1])
            if db.dialect == "sqlite"
            else PostgresWriter(db.url, epoch=epoch, session=db.application_name)
        )
        self._on_deposed = on_deposed
        self.deposed: Deposed | None = None
        self._batch = _Batch()
        self._runner: asyncio.Task[None] | None = None
        self._committing: asyncio.Future[set[str]] | None = None
        self._closed = False
        self.commits = 0  # transactions committed, for metrics and tests
        self.rows = 0  # task writes committed
        self.failures = 0  # commits the store failed (each retried until it succeeds)

    # -- appending ------------------------------------------------------------------------
    def create(self, row: dict[str, Any], *, at: datetime) -> None:
        """A new task (``row`` holds every column of ``tasks``) and its ``queued`` history."""
        w = self._write(row["id"])
        w.insert = dict(row)
        w.history.append(history_row(row["id"], None, row["state"], at, ""))
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
        w.history.append(history_row(task_id, frm.value, to.value, at, detail))
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

    def _write(self, task_id: str) -> Write:
        w = self._batch.writes.get(task_id)
        if w is None:
            w = self._batch.writes[task_id] = Write()
        return w

    # -- committing -----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._batch)

    async def flush(self) -> set[str]:
        """Wait until everything appended so far is committed (batches commit in order, and
        one the store failed is retried until it commits, so this may wait out an outage);
        returns the ids of tasks whose writes were refused by a constraint, which are not in
        the store."""
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
        if self.deposed is not None:
            raise self.deposed
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
                failed = await self._commit_until_done(batch)
            except asyncio.CancelledError:
                if not done.done():
                    done.cancel()
                raise
            except Deposed as exc:
                self._depose(exc, done)
                return
            done.set_result(failed)
            for callback in batch.after:
                try:
                    callback()
                except Exception:
                    log.exception("a callback after a commit of task writes failed")

    def _depose(self, exc: Deposed, done: asyncio.Future[set[str]]) -> None:
        """Nothing of this batch or any later one is committed: every waiter learns why."""
        log.error("task writes refused, this control plane no longer leads: %s", exc.message)
        self.deposed = exc
        for waiting in (done, self._batch.done):
            if waiting is not None and not waiting.done():
                waiting.set_exception(exc)
                waiting.exception()  # read here: a waiter may be gone already
        self._batch = _Batch()
        if self._on_deposed is not None:
            self._on_deposed(exc)

    async def _commit_until_done(self, batch: _Batch) -> set[str]:
        """Commit ``batch``, however long the store takes to come back. A batch is never
        dropped: the dispatcher has already acted on it (a task moved, a slot freed), and a
        later batch must not land before it. While the store is away, writers wait."""
        backoff = 0.05
        while True:
            try:
                return await self._commit(batch)
            except Deposed:
                raise  # never retried: another replica leads
            except Unavailable as exc:
                self.failures += 1
                log.error(
                    "a batch of %d task writes was not committed (%s); retrying in %.2fs",
                    len(batch),
                    exc.message,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _commit(self, batch: _Batch) -> set[str]:
        if not batch.writes and not batch.busy:
            return set()
        if not batch.split:
            try:
                await self._writer.apply(list(batch.writes.items()), batch.busy)
                self.commits += 1
                self.rows += len(batch.writes)
                return set()
            except Refused:
                if len(batch.writes) <= 1 and not batch.busy:
                    return set(batch.writes)
            batch.split = True
        # one bad row: commit each task alone, so that only it fails; what is committed is
        # remembered, so a retry after the store failed midway does not write it twice
        for task_id, write in batch.writes.items():
            if task_id in batch.settled:
                continue
            try:
                await self._writer.apply([(task_id, write)], {})
            except Refused as exc:
                log.warning("task %s not recorded: %s", task_id, exc)
                batch.refused.add(task_id)
            batch.settled.add(task_id)
        if batch.busy:
            with contextlib.suppress(Refused):  # an agent row that is gone
                await self._writer.apply([], batch.busy)
        self.commits += 1
        self.rows += len(batch.writes) - len(batch.refused)
        return set(batch.refused)

    async def close(self, *, timeout: float = 10.0) -> None:
        """Commit what is pending (waiting at most ``timeout`` for a store that is away: what
        is then lost is redone from the store's state at the next start), then refuse new
        writes."""
        try:
            async with asyncio.timeout(timeout):
                if len(self._batch) and self.deposed is None:
                    await self.flush()
                if self._runner is not None and not self._runner.done():
                    await asyncio.shield(self._runner)
        except Deposed:
            pass  # nothing more may be committed, and nothing was
        except TimeoutError:
            log.error("closing with %d task writes not committed: the store is away", self.pending)
            if self._runner is not None:
                self._runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._runner
        self._closed = True
        await self._writer.close()
