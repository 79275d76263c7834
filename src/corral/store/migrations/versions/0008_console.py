"""console and traces: each state an agent entered (when and why); the trace context a
task was submitted under

Revision ID: 0008_console
Revises: 0007_org_deleting
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_console"
down_revision = "0007_org_deleting"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_transitions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_transitions_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_transitions")),
    )
    with op.batch_alter_table("agent_transitions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_agent_transitions_agent_id"), ["agent_id"], unique=False
        )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("traceparent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("traceparent")
    with op.batch_alter_table("agent_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agent_transitions_agent_id"))
    op.drop_table("agent_transitions")
