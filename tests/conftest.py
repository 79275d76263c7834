"""Shared fixtures: database backends (SQLite always, PostgreSQL when configured).

Each test gets a database at the head migration holding only what the migrations put there.
Migrating from scratch costs a second or two on PostgreSQL, so it is done once a session:
SQLite tests get a copy of a migrated file; on PostgreSQL the tables are emptied, their
sequences restarted and the migrations' own rows put back, unless a test changed the schema's shape (then it is dropped
and migrated again)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.store.db import Database

POSTGRES_URL = os.environ.get("CORRAL_TEST_POSTGRES_URL")
NO_POSTGRES = "CORRAL_TEST_POSTGRES_URL is not set: PostgreSQL backend not tested here"

#: the shape of the public schema: its tables, columns, indexes, constraints, triggers,
#: functions, types and sequences, one line each
_SHAPE = """
SELECT coalesce(string_agg(item, E'\\n' ORDER BY item), '') FROM (
    SELECT 'column ' || c.relname || '.' || a.attname || ' '
           || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull::text || ' '
           || coalesce(pg_get_expr(d.adbin, d.adrelid), '') AS item
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v')
       AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' '
           || pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    UNION ALL SELECT 'trigger ' || t.tgname || ' ' || c.relname || ' ' || t.tgenabled::text
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
     WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace
    UNION ALL SELECT 'function ' || proname || ' ' || md5(prosrc)
      FROM pg_proc WHERE pronamespace = 'public'::regnamespace
    UNION ALL SELECT 'type ' || typname FROM pg_type WHERE typnamespace = 'public'::regnamespace
    UNION ALL SELECT 'sequence ' || sequencename FROM pg_sequences WHERE schemaname = 'public'
) AS shape
"""
_RESTART_SEQUENCES = """
SELECT setval(quote_ident(schemaname) || '.' || quote_ident(sequencename), start_value, false)
  FROM pg_sequences WHERE schemaname = 'public'
"""
_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"


class _Migrated:
    """What a freshly migrated PostgreSQL schema looked like: its shape and each table's rows."""

    def __init__(self, shape: str, rows: dict[str, list[Any]]) -> None:
        self.shape = shape
        self.rows = rows


_migrated: dict[str, _Migrated] = {}  # by URL, for this session
_sqlite_template: list[Path] = []  # the migrated SQLite file, once made


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _empty(conn: Any, known: _Migrated) -> None:
    """Every table as the migrations left it, in one transaction."""
    async with conn.transaction():
        # DELETE, not TRUNCATE: a few rows go faster than new files for every table
        await conn.execute("SET LOCAL session_replication_role = replica")  # no FK checks
        for table in known.rows:
            await conn.execute(f'DELETE FROM public."{table}"')
        await conn.execute(_RESTART_SEQUENCES)
        for table, rows in known.rows.items():
            if rows:
                await conn.copy_records_to_table(
                    table, records=rows, columns=list(rows[0].keys()), schema_name="public"
                )


async def reset_postgres(url: str) -> None:
    """Bring the test database's public schema to the head migration with only the
    migrations' rows in it (tests run one at a time)."""
    import asyncpg  # type: ignore[import-untyped]  # no stubs

    conn = await asyncpg.connect(_plain(url))
    try:
        known = _migrated.get(url)
        if known is not None and await conn.fetchval(_SHAPE) == known.shape:
            with contextlib.suppress(asyncpg.PostgresError):  # (not a superuser): drop it all
                await _empty(conn, known)
                return
        await conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()
    database = Database(url)
    try:
        await database.start()
    finally:
        await database.close()
    conn = await asyncpg.connect(_plain(url))
    try:
        shape = await conn.fetchval(_SHAPE)
        names = [r["tablename"] for r in await conn.fetch(_TABLES)]
        rows = {name: list(await conn.fetch(f'SELECT * FROM public."{name}"')) for name in names}
    finally:
        await conn.close()
    _migrated[url] = _Migrated(shape, rows)


async def migrated_sqlite(path: Path, scratch: Path) -> None:
    """A copy of a migrated SQLite database at ``path`` (migrated once, in ``scratch``)."""
    if not _sqlite_template:
        template = scratch / "migrated.db"
        database = Database(f"sqlite+aiosqlite:///{template}")
        try:
            await database.start()
        finally:
            await database.close()  # the last connection out folds the WAL into the file
        assert not template.with_name("migrated.db-wal").exists()
        _sqlite_template.append(template)
    shutil.copyfile(_sqlite_template[0], path)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A database URL for each backend, at the head migration, holding only what the
    migrations put there."""
    if request.param == "sqlite":
        path = tmp_path / "corral.db"
        await migrated_sqlite(path, tmp_path_factory.getbasetemp())
        yield f"sqlite+aiosqlite:///{path}"
        return
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    await reset_postgres(POSTGRES_URL)
    yield POSTGRES_URL


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.start()
    try:
        yield database
    finally:
        await database.close()
