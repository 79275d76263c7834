"""Shared fixtures: database backends (SQLite always, PostgreSQL when configured)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.store.db import Database

POSTGRES_URL = os.environ.get("CORRAL_TEST_POSTGRES_URL")
NO_POSTGRES = "CORRAL_TEST_POSTGRES_URL is not set: PostgreSQL backend not tested here"


async def reset_postgres(url: str) -> None:
    """Drop everything in the test database's public schema (tests run one at a time)."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated-from-scratch database URL for each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'corral.db'}"
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
