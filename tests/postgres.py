"""A PostgreSQL database of a test's own: created from CORRAL_TEST_POSTGRES_URL's server for
the test and dropped after it (with FORCE: whatever the test left connected), so that tests
which run replicas never share a database with anything else."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.conftest import NO_POSTGRES, POSTGRES_URL

__all__ = ["fresh_database"]


@contextlib.asynccontextmanager
async def fresh_database(prefix: str = "corral_test") -> AsyncIterator[str]:
    """The URL (``postgresql://``) of a new, empty database; skips when none is configured."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    import asyncpg  # type: ignore[import-untyped]  # no stubs

    server = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
