"""roles per organization; an agent's name is unique only among its org's live agents

Revision ID: 0005_roles
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_roles"
down_revision = "0004"
branch_labels = None
depends_on = None

_LIVE = sa.text("state != 'terminated'")


def upgrade() -> None:
    op.create_table(
        "roles",
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_roles_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("org_id", "name", name=op.f("pk_roles")),
    )
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_constraint("uq_agents_org_name", type_="unique")
    op.create_index(
        "uq_agents_org_live_name",
        "agents",
        ["org_id", "name"],
        unique=True,
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_agents_org_live_name", table_name="agents")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_agents_org_name", ["org_id", "name"])
    op.drop_table("roles")
