"""Engine, sessions and migrations for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from corral.domain import documents
from corral.domain.errors import Deposed, InvalidInput, Unavailable

__all__ = ["Database", "Unreadable", "check_reachable", "load_json", "redact_url", "sqlite_url"]

_MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _normalize(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.split(":///", 1)[1]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    raise InvalidInput(
        f"unsupported database URL scheme in {url.split('://', 1)[0]!r}: "
        "use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
    )


class Unreadable(dict[str, Any]):
    """Stands for a stored JSON value that cannot be loaded safely (not JSON, or nested
    deeper than :data:`~corral.domain.documents.MAX_DEPTH`): the repository that meets it
    quarantines its row instead of failing the whole query."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


def load_json(text: str | bytes) -> Any:
    """The engine's JSON decoder: never raises, never recurses on what it was given."""
    try:
        value = orjson.loads(text)  # refuses past 1,024 levels instead of recursing
    except orjson.JSONDecodeError:
        try:
            value = json.loads(text)  # what orjson refuses: integers beyond 64 bits
        except (ValueError, RecursionError) as exc:
            return Unreadable(f"stored value is not loadable JSON ({type(exc).__name__})")
    # a text with no more brackets than the depth allowed is not walked: with hundreds of
    # agents read, the walk was a tenth of a dispatch round's time
    limit = documents.MAX_DEPTH
    if documents.openings(text) > limit and documents.depth(value) > limit:
        return Unreadable(f"stored value nests deeper than {documents.MAX_DEPTH} levels")
    return value


#: taken (for the migration's transaction) by every control plane that starts on PostgreSQL,
#: so replicas starting together migrate one after the other ("corral-mg" in ASCII)
_MIGRATION_KEY = 0x636F7272616C2D6D67 & 0x7FFFFFFFFFFFFFFF


class Database:
    """One engine and its session factory; ``await db.start()`` migrates to head.

    Args:
        url: ``sqlite:///PATH`` or ``postgresql://...``.
        application_name: the name of every PostgreSQL session (a replica's; see
            :mod:`corral.store.leases`).
        fence: while it says False, no statement but a read reaches the database
            (:class:`Deposed`): a replica that lost its lease writes nothing more.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        application_name: str | None = None,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        self.url = _normalize(url)
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        self.application_name = application_name
        kwargs: dict[str, Any] = {"echo": echo, "json_deserializer": load_json}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
            # every session and connection ends its transaction (commit or rollback) before it
            # gives its connection back: the pool's own rollback on return would be a second
            # round trip to the driver's thread, on every statement's way out
            kwargs["pool_reset_on_return"] = None
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 10
            if application_name:
                kwargs["connect_args"] = {"server_settings": {"application_name": application_name}}
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        if fence is not None:
            event.listen(self.engine.sync_engine, "before_cursor_execute", _fenced(fence))
        if self.dialect == "postgresql":
            event.listen(self.engine.sync_engine, "handle_error", _lost_session(fence))
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite takes one writer at a time and lets the others poll for its lock, sleeping up
        # to 100 ms between tries while each holds a pooled connection (so that readers wait
        # for one too): a burst of concurrent writes, a hundred agents provisioned at once,
        # took seconds so. In one process writers queue here instead, each starting as the
        # last one ends, and hold no connection while they wait.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that writes: committed when the block ends, rolled back
        if it raises. On SQLite one at a time in this process (see above); nothing that
        writes may be awaited inside the block but through its session."""
        if self._write_lock is None:
            async with self.sessions() as s, s.begin():
                yield s
            return
        async with self._write_lock, self.sessions() as s, s.begin():
            yield s

    async def start(self, *, migrate: bool = True) -> None:
        """Migrate to head (without ``migrate``: only connect, for a replica that migrated
        before it campaigned for the lease).

        Raises:
            Unavailable: the database did not answer, or the migration failed.
        """
        try:
            if not migrate:
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                return
            async with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_KEY}
                    )
                if not await conn.run_sync(_at_head):
                    await conn.run_sync(_upgrade)
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable(f"database unavailable or migration failed: {exc}") from exc

    async def close(self) -> None:
        await self.engine.dispose()


def _fenced(fence: Callable[[], bool]) -> Callable[..., None]:
    def check(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not fence() and statement.lstrip()[:6].upper() != "SELECT":
            raise Deposed("this control plane no longer holds the leader lease: it writes nothing")

    return check


def _lost_session(fence: Callable[[], bool] | None) -> Callable[[ExceptionContext], None]:
    """A statement whose session was lost (ended by a new leader or an administrator, the
    server gone) fails in the error tree, not as the driver's error (an API answers it 503, not
    500): :class:`Deposed` once the lease is lost (a new leader ends a stale one's sessions; the
    transaction was rolled back, so nothing of it was committed), else :class:`Unavailable`."""

    def handle(context: ExceptionContext) -> None:
        if not (context.is_disconnect or _session_lost(context.original_exception)):
            return
        reason = str(context.original_exception).splitlines()[0] or "connection lost"
        if fence is not None and not fence():
            raise Deposed(
                "this control plane lost the leader lease while answering, and its database "
                f"session with it ({reason}): nothing of it was committed"
            )
        raise Unavailable(f"the database session was lost: {reason}")

    return handle


#: SQLSTATEs of a session the server ended: connection exceptions (class 08), an administrator's
#: termination, a crash or a shutdown (57P01-57P03)
_LOST_STATES = ("57P01", "57P02", "57P03")


def _session_lost(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) says the database session is gone."""
    import asyncpg  # type: ignore[import-untyped]  # no stubs; PostgreSQL only

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, asyncpg.exceptions.ConnectionDoesNotExistError | OSError):
            return True
        state = getattr(exc, "sqlstate", None)
        if isinstance(state, str) and (state.startswith("08") or state in _LOST_STATES):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


_REVISION = re.compile(
    r"""^(down_revision|revision)\s*(?::[^=\n]*)?=\s*["']([^"'\n]+)["']""", re.MULTILINE
)


@functools.cache
def script_head() -> str | None:
    """The newest migration's revision, read from the migration files as text (importing
    alembic and loading every migration costs a start a good share of its time); None
    unless every file names its revision and they form one line with one head."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (_MIGRATIONS / "versions").glob("*.py"):
        if path.name == "__init__.py":
            continue
        found = dict(_REVISION.findall(path.read_text()))
        if "revision" not in found:
            return None  # a file this reading does not understand: alembic decides
        revisions.add(found["revision"])
        if "down_revision" in found:
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


def _at_head(conn: Connection) -> bool:
    """Whether the database is at the newest migration already: nothing to upgrade, and
    alembic need not be loaded at all."""
    head = script_head()
    if head is None or not inspect(conn).has_table("alembic_version"):
        return False
    rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return list(rows) == [head]


def _upgrade(conn: Connection) -> None:
    from alembic import command  # only when there is something to upgrade
    from alembic.config import Config

    logging.getLogger("alembic").setLevel(logging.WARNING)  # a quiet start: no step-by-step
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


async def check_reachable(url: str, *, timeout: float = 5.0) -> None:
    """Connect once and ask ``SELECT 1``, writing nothing: the check ``corral up`` makes
    before it starts anything.

    Raises:
        InvalidInput: a URL of no supported scheme.
        Unavailable: the database cannot be reached or refuses the connection.
    """
    normalized = _normalize(url)
    if normalized.startswith("sqlite"):
        return  # a file in a directory: the data dir's own check covers it
    engine = create_async_engine(normalized, connect_args={"timeout": timeout})
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0] or type(exc).__name__
        raise Unavailable(
            f"database unreachable at {redact_url(url)}: {reason}",
            details={"database": redact_url(url)},
        ) from exc
    finally:
        await engine.dispose()


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{host}"
