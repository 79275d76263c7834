"""One control plane per database: the lock its dispatcher holds while it is the writer of task
state.

While it runs, a control plane's dispatcher keeps every unfinished task in memory and is the
only writer of task state; a second control plane on the same database would decide the same
tasks twice. So a control plane takes this lock before it starts and holds it until it stops:
on PostgreSQL a session advisory lock on a connection kept open for that long, on SQLite an
exclusive ``flock`` on a file beside the database. Either is released by the kernel or the
server when the process dies, so kill -9 never leaves it stuck.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from corral.domain.errors import Conflict, Unavailable
from corral.store.db import Database

__all__ = ["ADVISORY_KEY", "WriterLock"]

#: The advisory lock's key on PostgreSQL ("corral" in ASCII, as a bigint).
ADVISORY_KEY = 0x636F7272616C

_HELD = "another control plane is running against this database ({where}); stop it first"


class WriterLock:
    """``await lock.acquire()`` or :class:`Conflict`; ``await lock.release()`` when done."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: AsyncConnection | None = None
        self._fd: int | None = None

    async def acquire(self) -> None:
        """Take the lock without waiting.

        Raises:
            Conflict: another control plane holds it.
            Unavailable: the database or the lock file cannot be reached.
        """
        if self._db.dialect == "sqlite":
            self._acquire_file(self._db.url.split(":///", 1)[1] + ".writer.lock")
        else:
            await self._acquire_advisory()

    def _acquire_file(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise Unavailable(f"cannot open the writer lock {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(_HELD.format(where=path), details={"lock": path}) from None
        self._fd = fd

    async def _acquire_advisory(self) -> None:
        try:
            conn = await self._db.engine.connect()
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable(f"cannot reach the database for its writer lock: {exc}") from exc
        try:
            got = (
                await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY})
            ).scalar_one()
            await conn.commit()  # the lock is the session's, not the transaction's
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            raise Conflict(
                _HELD.format(where=f"advisory lock {ADVISORY_KEY}"), details={"lock": "advisory"}
            )
        self._conn = conn

    async def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(SQLAlchemyError, OSError):
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
            await conn.close()
