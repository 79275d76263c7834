"""A start on a database at the newest migration loads no migration at all; one behind is
upgraded. The newest revision is read from the migration files as text, and must be the one
alembic finds."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

import corral.store.db as store_db
from corral.store.db import Database, script_head, sqlite_url


def test_the_newest_revision_read_as_text_is_alembics_head() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(store_db._MIGRATIONS))
    assert [script_head()] == ScriptDirectory.from_config(cfg).get_heads()


async def _start(url: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Start a Database on ``url``; which upgrades ran (none, or one)."""
    upgraded: list[str] = []
    real = store_db._upgrade

    def upgrade(conn: object) -> None:
        upgraded.append("upgrade")
        real(conn)  # type: ignore[arg-type]

    monkeypatch.setattr(store_db, "_upgrade", upgrade)
    db = Database(url)
    try:
        await db.start()
    finally:
        await db.close()
    return upgraded


async def test_a_database_at_head_is_not_upgraded_one_behind_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path / "corral.db")
    assert await _start(url, monkeypatch) == ["upgrade"]  # empty: every migration
    assert await _start(url, monkeypatch) == []  # at head: nothing loaded

    db = Database(url)  # one behind: the newest migration is undone
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_downgrade_one)
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            assert version and version[0][0] != script_head()
    finally:
        await db.close()
    assert await _start(url, monkeypatch) == ["upgrade"]
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert [v[0] for v in version] == [script_head()]
    finally:
        await db.close()


def _downgrade_one(conn: object) -> None:
    from alembic import command

    cfg = Config()
    cfg.set_main_option("script_location", str(store_db._MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.downgrade(cfg, "-1")
