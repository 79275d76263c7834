"""How the task journal's batches reach the database: one writer for SQLite (its own
connection in one worker thread, plain ``executemany``) and one for PostgreSQL (an asyncpg
connection of its own). Values are stored exactly as the ORM stores them. See
:mod:`corral.store.task_journal` for the batching itself."""

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

from corral.domain.errors import Deposed, Unavailable
from corral.store.schema import TaskRow

__all__ = [
    "Busy",
    "Items",
    "PostgresWriter",
    "Refused",
    "SqliteWriter",
    "Write",
    "Writer",
    "history_row",
]

log = logging.getLogger("corral.store.journal")

_TASKS: Table = TaskRow.__table__  # type: ignore[assignment]


@dataclass(slots=True)
class Write:
    """What one batch does to one task."""

    insert: dict[str, Any] | None = None  # the whole row, when the task is new in this batch
    guard: str | None = None  # the state the row must be in for the update to apply
    fields: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


Items = list[tuple[str, Write]]
Busy = dict[str, tuple[str | None, datetime]]


class Refused(Exception):
    """A constraint refused the batch (a duplicate id, a vanished org)."""


class Writer(Protocol):
    async def apply(self, writes: Items, busy: Busy) -> None: ...

    async def close(self) -> None: ...


def history_row(
    task_id: str, frm: str | None, to: str, at: datetime, detail: str
) -> dict[str, Any]:
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


class SqliteWriter:
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

    async def apply(self, writes: Items, busy: Busy) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._apply, writes, busy)
        except sqlite3.IntegrityError as exc:
            raise Refused(str(exc)) from exc
        except sqlite3.Error as exc:
            raise Unavailable(f"the store refused task writes: {exc}") from exc

    def _apply(self, writes: Items, busy: Busy) -> None:
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
    "INSERT INTO task_events (task_id, from_state, to_state, at, detail, epoch) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)
#: the fence: read first in every transaction of a leader, and held until it commits, so a
#: takeover (which raises the epoch) waits for it or it sees the new epoch and stops
#: KEY SHARE: a takeover (which locks the row FOR UPDATE) waits for the transaction, a renewal
#: (an UPDATE of no key) does not, so a busy journal never holds up the leader's renewals
_PG_EPOCH = "SELECT epoch FROM leader_lease WHERE id = 1 FOR KEY SHARE"
#: what the database's own fence (migration 0005's trigger) raises
_DEPOSED_SQLSTATE = "CR001"
_PG_UPDATE_BUSY = "UPDATE agents SET busy_task = $1, updated_at = $2 WHERE id = $3"
#: (position, converter) of the columns asyncpg takes in another form: JSON as its text
_PG_CONVERTING = tuple((i, _sqlite_json) for i, c in enumerate(_TASK_COLUMNS) if c in _JSON_COLUMNS)


def _pg_value(column: str, v: Any) -> Any:
    return _sqlite_json(v) if column in _JSON_COLUMNS else v


class PostgresWriter:
    """asyncpg directly, on a connection kept for the journal: a commit costs one round trip
    per statement kind instead of the engine's pooling and compilation on every batch.

    With an ``epoch`` (a replica leading under :mod:`corral.store.leases`), every transaction
    is fenced: it commits only while that epoch is the lease's current one, else
    :class:`~corral.domain.errors.Deposed`; its history rows carry the epoch."""

    def __init__(self, url: str, *, epoch: int | None = None, session: str | None = None) -> None:
        self._url = "postgresql://" + url.split("://", 1)[1]
        self._conn: Any = None
        self._epoch = epoch
        self._settings = {"application_name": session} if session else {}

    async def apply(self, writes: Items, busy: Busy) -> None:
        import asyncpg  # type: ignore[import-untyped]  # no stubs; used here only

        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._url, server_settings=self._settings)
            conn = self._conn
            async with conn.transaction():
                if self._epoch is not None:
                    current = await conn.fetchval(_PG_EPOCH)
                    if current != self._epoch:
                        raise Deposed(
                            f"the leader lease's epoch is {current}, not {self._epoch}: "
                            "another control plane leads, so these writes are refused",
                            details={"epoch": self._epoch, "current": current},
                        )
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
                    (h["task_id"], h["from_state"], h["to_state"], h["at"], h["detail"], epoch)
                    for epoch in (self._epoch,)
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
            raise Refused(str(exc)) from exc
        except asyncpg.PostgresError as exc:
            if exc.sqlstate != _DEPOSED_SQLSTATE:
                await self._drop()
                raise Unavailable(f"the store refused task writes: {exc}") from exc
            raise Deposed(f"the database refused a past leader's task writes: {exc}") from exc
        except (asyncpg.InterfaceError, OSError) as exc:
            await self._drop()
            raise Unavailable(f"the store refused task writes: {exc}") from exc

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def close(self) -> None:
        await self._drop()
