"""model gateway: models, budgets, usage, gateway credentials

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _org_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["org_id"],
        ["organizations.id"],
        name=op.f(f"fk_{table}_org_id_organizations"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("base_url", sa.String(length=2000), nullable=False),
        sa.Column("key_secret", sa.String(length=253), nullable=False),
        sa.Column("upstream_model", sa.String(length=253), nullable=False),
        sa.Column("price_in", sa.BigInteger(), nullable=False),
        sa.Column("price_out", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _org_fk("models"),
        sa.PrimaryKeyConstraint("org_id", "name", name=op.f("pk_models")),
    )
    op.create_table(
        "model_budgets",
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=True),
        sa.Column("cost", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _org_fk("model_budgets"),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_model_budgets")),
    )
    op.create_table(
        "task_budgets",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=True),
        sa.Column("cost", sa.BigInteger(), nullable=True),
        _org_fk("task_budgets"),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_task_budgets")),
    )
    op.create_index(op.f("ix_task_budgets_org_id"), "task_budgets", ["org_id"])
    op.create_table(
        "model_usage",
        sa.Column("id", _ID, nullable=False),
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("role", sa.String(length=63), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("tokens_in", sa.BigInteger(), nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        _org_fk("model_usage"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_usage")),
    )
    op.create_index("ix_model_usage_org_period", "model_usage", ["org_id", "period"])
    op.create_index(op.f("ix_model_usage_task_id"), "model_usage", ["task_id"])
    op.create_table(
        "gateway_credentials",
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _org_fk("gateway_credentials"),
        sa.PrimaryKeyConstraint("agent_id", name=op.f("pk_gateway_credentials")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_gateway_credentials_token_hash")),
    )
    op.create_index(op.f("ix_gateway_credentials_org_id"), "gateway_credentials", ["org_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_gateway_credentials_org_id"), table_name="gateway_credentials")
    op.drop_table("gateway_credentials")
    op.drop_index(op.f("ix_model_usage_task_id"), table_name="model_usage")
    op.drop_index("ix_model_usage_org_period", table_name="model_usage")
    op.drop_table("model_usage")
    op.drop_index(op.f("ix_task_budgets_org_id"), table_name="task_budgets")
    op.drop_table("task_budgets")
    op.drop_table("model_budgets")
    op.drop_table("models")
