"""task policy, idempotency key, newest-first paging

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=128), nullable=True))
        batch_op.create_index("ix_tasks_org_seq", ["org_id", "seq"], unique=False)
        batch_op.create_index(
            "uq_tasks_org_idempotency_key", ["org_id", "idempotency_key"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("uq_tasks_org_idempotency_key")
        batch_op.drop_index("ix_tasks_org_seq")
        batch_op.drop_column("idempotency_key")
        batch_op.drop_column("policy")
