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
import json
import logging
import operator
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import JSON, DateTime, Table

from corral.domain.errors import Unavailable
from corral.domain.tasks import TaskState
from corral.store.db import Database
from corral.store.schema import TaskRow

__all__ = ["TaskJournal"]

log = logging.getLogger("corral.store.journal")

_TASKS: Table = TaskRow.__table__  # type: ignore[assignment]


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
    split: bool = False  # committed task by task (a constraint refused the whole)
    settled: set[str] = field(default_factory=set)  # tasks committed or refused, when split
    refused: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.writes) + len(self.busy) + len(self.after)


_Items = list[tuple[str, _Write]]
_Busy = dict[str, tuple[str | None, datetime]]


class _Refused(Exception):
    """A constraint refused the batch (a duplicate id, a vanished org)."""


class _Writer(Protocol):
    async def apply(self, writes: _Items, busy: _Busy) -> None: ...

    async def close(self) -> None: ...


class TaskJournal:
    """Group-committed task writes. ``await close()`` commits what is left."""

    def __init__(self, db: Database) -> None:
        self._writer: _Writer = (
            _SqliteWriter(db.url.split(":///", 1)[1])
            if db.dialect == "sqlite"
            else _PostgresWriter(db.url)
        )
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
            done.set_result(failed)
            for callback in batch.after:
                try:
                    callback()
                except Exception:
                    log.exception("a callback after a commit of task writes failed")

    async def _commit_until_done(self, batch: _Batch) -> set[str]:
        """Commit ``batch``, however long the store takes to come back. A batch is never
        dropped: the dispatcher has already acted on it (a task moved, a slot freed), and a
        later batch must not land before it. While the store is away, writers wait."""
        backoff = 0.05
        while True:
            try:
                return await self._commit(batch)
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
            except _Refused:
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
            except _Refused as exc:
                log.warning("task %s not recorded: %s", task_id, exc)
                batch.refused.add(task_id)
            batch.settled.add(task_id)
        if batch.busy:
            with contextlib.suppress(_Refused):  # an agent row that is gone
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
                if len(self._batch):
                    await self.flush()
                if self._runner is not None and not self._runner.done():
                    await asyncio.shield(self._runner)
        except TimeoutError:
            log.error("closing with %d task writes not committed: the store is away", self.pending)
            if self._runner is not None:
                self._runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._runner
        self._closed = True
        await self._writer.close()


def _history(task_id: str, frm: str | None, to: str, at: datetime, detail: str) -> dict[str, Any]:
    return {"task_id": task_id, "from_state": frm, "to_state": to, "at": at, "detail": detail}


# -- SQLite: one connection, one thread, a batch per hop ---------------------------------------

_TASK_COLUMNS = tuple(c.name for c in _TASKS.columns)
_JSON_COLUMNS = frozenset(c.name for c in _TASKS.columns if c.type._type_affinity is JSON)
_TIME_COLUMNS = frozenset(c.name for c in _TASKS.columns if isinstance(c.type, DateTime))
_INSERT_TASK = (
    f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) VALUES ({', '.join('?' * len(_TASK_COLUMNS))})"
)
_INSERT_EVENT = (
    "INSERT INTO task_events (task_id, from_state, to_state, at, detail) VALUES (?, ?, ?, ?, ?)"
)
_UPDATE_BUSY = "UPDATE agents SET busy_task = ?, updated_at = ? WHERE id = ?"


def _sqlite_time(v: datetime | None) -> str | None:
    """As the ORM's SQLite DATETIME stores it: the value's wall clock (always UTC here)."""
    if v is None:
        return None
    return v.isoformat(" ", "microseconds")[:26]  # without the offset


def _sqlite_json(v: Any) -> str:
    """As the ORM's JSON type stores it (``None`` is the JSON ``null``)."""
    try:
        return orjson.dumps(v).decode()
    except TypeError:  # e.g. an integer beyond 64 bits
        return json.dumps(v)


def _as_is(v: Any) -> Any:
    return v


def _converter(column: str) -> Callable[[Any], Any]:
    if column in _JSON_COLUMNS:
        return _sqlite_json
    if column in _TIME_COLUMNS:
        return _sqlite_time
    return _as_is


_CONVERT = {c: _converter(c) for c in _TASK_COLUMNS}
_ROW_VALUES = operator.itemgetter(*_TASK_COLUMNS)
#: (position, converter) of the columns stored in another form than Python's
_ROW_CONVERTING = tuple(
    (i, _CONVERT[c]) for i, c in enumerate(_TASK_COLUMNS) if _CONVERT[c] is not _as_is
)


def _row_values(
    row: dict[str, Any], converting: tuple[tuple[int, Callable[[Any], Any]], ...]
) -> list[Any]:
    """A ``tasks`` row's values in column order, converted where the driver wants another form."""
    values = list(_ROW_VALUES(row))
    for i, convert in converting:
        values[i] = convert(values[i])
    return values


def _sqlite_value(column: str, v: Any) -> Any:
    return _CONVERT[column](v)


class _SqliteWriter:
    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="corral-journal")

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._conn = conn
        return self._conn

    async def apply(self, writes: _Items, busy: _Busy) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._apply, writes, busy)
        except sqlite3.IntegrityError as exc:
            raise _Refused(str(exc)) from exc
        except sqlite3.Error as exc:
            raise Unavailable(f"the store refused task writes: {exc}") from exc

    def _apply(self, writes: _Items, busy: _Busy) -> None:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            inserts = [
                _row_values(w.insert, _ROW_CONVERTING) for _, w in writes if w.insert is not None
            ]
            if inserts:
                conn.executemany(_INSERT_TASK, inserts)
            groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
            for task_id, w in writes:
                if w.insert is None and w.fields:
                    keys = tuple(sorted(w.fields))
                    values = tuple(_sqlite_value(k, w.fields[k]) for k in keys)
                    groups[keys].append((*values, task_id, w.guard))
            for keys, params in groups.items():
                sets = ", ".join(f"{k} = ?" for k in keys)
                cur = conn.executemany(
                    f"UPDATE tasks SET {sets} WHERE id = ? AND state = ?",  # noqa: S608 - column names
                    params,
                )
                if 0 <= cur.rowcount < len(params):
                    log.warning(
                        "%d of %d task updates found the task changed by another writer",
                        len(params) - cur.rowcount,
                        len(params),
                    )
            times: dict[datetime, str | None] = {}  # moves decided together share a clock
            history = [
                (
                    h["task_id"],
                    h["from_state"],
                    h["to_state"],
                    times.get(h["at"]) or times.setdefault(h["at"], _sqlite_time(h["at"])),
                    h["detail"],
                )
                for _, w in writes
                for h in w.history
            ]
            if history:
                conn.executemany(_INSERT_EVENT, history)
            if busy:
                conn.executemany(
                    _UPDATE_BUSY, [(t, _sqlite_time(at), a) for a, (t, at) in busy.items()]
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._thread, shut)
        self._thread.shutdown(wait=True)


# -- PostgreSQL: one connection of its own, a batch per transaction ---------------------------

_PG_INSERT_TASK = (
    f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(_TASK_COLUMNS)))})"
)
_PG_INSERT_EVENT = (
    "INSERT INTO task_events (task_id, from_state, to_state, at, detail) "
    "VALUES ($1, $2, $3, $4, $5)"
)
_PG_UPDATE_BUSY = "UPDATE agents SET busy_task = $1, updated_at = $2 WHERE id = $3"
#: (position, converter) of the columns asyncpg takes in another form: JSON as its text
_PG_CONVERTING = tuple((i, _sqlite_json) for i, c in enumerate(_TASK_COLUMNS) if c in _JSON_COLUMNS)


def _pg_value(column: str, v: Any) -> Any:
    return _sqlite_json(v) if column in _JSON_COLUMNS else v


class _PostgresWriter:
    """asyncpg directly, on a connection kept for the journal: a commit costs one round trip
    per statement kind instead of the engine's pooling and compilation on every batch."""

    def __init__(self, url: str) -> None:
        self._url = "postgresql://" + url.split("://", 1)[1]
        self._conn: Any = None

    async def apply(self, writes: _Items, busy: _Busy) -> None:
        import asyncpg  # type: ignore[import-untyped]  # no stubs; used here only

        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._url)
            conn = self._conn
            async with conn.transaction():
                inserts = [
                    _row_values(w.insert, _PG_CONVERTING) for _, w in writes if w.insert is not None
                ]
                if inserts:
                    await conn.executemany(_PG_INSERT_TASK, inserts)
                groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
                for task_id, w in writes:
                    if w.insert is None and w.fields:
                        keys = tuple(sorted(w.fields))
                        values = tuple(_pg_value(k, w.fields[k]) for k in keys)
                        groups[keys].append((*values, task_id, w.guard))
                for keys, params in groups.items():
                    sets = ", ".join(f"{k} = ${i + 1}" for i, k in enumerate(keys))
                    n = len(keys)
                    await conn.executemany(
                        f"UPDATE tasks SET {sets} WHERE id = ${n + 1} AND state = ${n + 2}",  # noqa: S608 - column names
                        params,
                    )
                history = [
                    (h["task_id"], h["from_state"], h["to_state"], h["at"], h["detail"])
                    for _, w in writes
                    for h in w.history
                ]
                if history:
                    await conn.executemany(_PG_INSERT_EVENT, history)
                if busy:
                    await conn.executemany(
                        _PG_UPDATE_BUSY, [(t, at, a) for a, (t, at) in busy.items()]
                    )
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise _Refused(str(exc)) from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            await self._drop()
            raise Unavailable(f"the store refused task writes: {exc}") from exc

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def close(self) -> None:
        await self._drop()
