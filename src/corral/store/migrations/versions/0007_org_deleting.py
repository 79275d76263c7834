"""organizations.deleting_at: an org being deleted, durably, until every layer let it go

Revision ID: 0007_org_deleting
Revises: 0006_leader_lease
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_org_deleting"
down_revision = "0006_leader_lease"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deleting_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("deleting_at")
