"""Alembic environment: runs on the connection Corral hands it (see corral.store.db)."""

from __future__ import annotations

from alembic import context

from corral.store.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - Corral always passes a connection
    raise RuntimeError("corral migrations run through corral.store.db.migrate()")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
