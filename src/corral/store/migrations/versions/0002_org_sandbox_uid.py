"""organizations.sandbox_uid: each organization's own uid for its local agents

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sandbox_uid", sa.Integer(), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_organizations_sandbox_uid"), ["sandbox_uid"]
        )


def downgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_organizations_sandbox_uid"), type_="unique")
        batch_op.drop_column("sandbox_uid")
