"""Tables of the model gateway: declared models, budgets, metered usage and agents' gateway
credentials. Kept apart from :mod:`corral.store.schema` (same metadata) so that the gateway's
storage reads as one piece. Costs are integer picodollars, so sums are exact."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from corral.store.schema import Base

__all__ = ["GatewayCredentialRow", "ModelBudgetRow", "ModelRow", "ModelUsageRow", "TaskBudgetRow"]


class ModelRow(Base):
    __tablename__ = "models"
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    base_url: Mapped[str] = mapped_column(String(2000))
    key_secret: Mapped[str] = mapped_column(String(253))
    upstream_model: Mapped[str] = mapped_column(String(253))
    price_in: Mapped[int] = mapped_column(BigInteger)  # micro-dollars per million tokens
    price_out: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ModelBudgetRow(Base):
    """An org's own period budget, replacing its plan's default; NULL: the plan's."""

    __tablename__ = "model_budgets"
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    cost: Mapped[int | None] = mapped_column(BigInteger)  # picodollars
    updated_at: Mapped[datetime]


class TaskBudgetRow(Base):
    """A task's budget, written before the task is submitted (so no foreign key to it)."""

    __tablename__ = "task_budgets"
    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    cost: Mapped[int | None] = mapped_column(BigInteger)


class ModelUsageRow(Base):
    """One metered model call."""

    __tablename__ = "model_usage"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    period: Mapped[str] = mapped_column(String(7))
    role: Mapped[str] = mapped_column(String(63))
    agent_id: Mapped[str] = mapped_column(String(128))
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(128))
    tokens_in: Mapped[int] = mapped_column(BigInteger)
    tokens_out: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(BigInteger)  # picodollars
    at: Mapped[datetime]
    __table_args__ = (Index("ix_model_usage_org_period", "org_id", "period"),)


class GatewayCredentialRow(Base):
    """An agent's current gateway credential: only its SHA-256 is kept."""

    __tablename__ = "gateway_credentials"
    agent_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
