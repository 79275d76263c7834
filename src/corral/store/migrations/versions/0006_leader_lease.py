"""leader lease: one row with the fencing epoch; task history records the writer's epoch

On PostgreSQL a trigger refuses any history row whose epoch is not the lease's current one,
so a deposed leader that still runs cannot commit a transition even past its own checks.

Revision ID: 0006_leader_lease
Revises: 0005_roles
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_leader_lease"
down_revision = "0005_roles"
branch_labels = None
depends_on = None

_FENCE_FUNCTION = """
CREATE FUNCTION corral_fence_task_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM recorded
        WHERE recorded.epoch IS NOT NULL
          AND recorded.epoch <> (SELECT epoch FROM leader_lease WHERE id = 1)
    ) THEN
        RAISE EXCEPTION 'deposed: a task transition of a past leader epoch'
            USING ERRCODE = 'CR001';
    END IF;
    RETURN NULL;
END $$
"""
_FENCE_TRIGGER = """
CREATE TRIGGER task_events_fenced AFTER INSERT ON task_events
    REFERENCING NEW TABLE AS recorded FOR EACH STATEMENT
    EXECUTE FUNCTION corral_fence_task_events()
"""


def upgrade() -> None:
    op.create_table(
        "leader_lease",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(length=253), nullable=True),
        sa.Column("api_url", sa.String(length=2000), nullable=True),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leader_lease")),
    )
    op.execute("INSERT INTO leader_lease (id, epoch) VALUES (1, 0)")
    with op.batch_alter_table("task_events") as batch:
        batch.add_column(sa.Column("epoch", sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FENCE_FUNCTION)
        op.execute(_FENCE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS task_events_fenced ON task_events")
        op.execute("DROP FUNCTION IF EXISTS corral_fence_task_events()")
    with op.batch_alter_table("task_events") as batch:
        batch.drop_column("epoch")
    op.drop_table("leader_lease")
