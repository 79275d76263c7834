"""Tables. Quantities are stored as integers (millicores, bytes) so that quota checks are
single atomic SQL statements on every backend."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AgentRow",
    "ApiKeyRow",
    "AuditRow",
    "Base",
    "DataKeyRow",
    "GrantRow",
    "LeaderRow",
    "OrgRow",
    "SecretRow",
    "TaskEventRow",
    "TaskRow",
    "UsageRow",
]

_naming = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_naming)
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class OrgRow(Base):
    __tablename__ = "organizations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    plan: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]
    # the local sandbox's uid and gid for the org's agents (as root); NULL until first needed
    sandbox_uid: Mapped[int | None] = mapped_column(Integer, unique=True, default=None)
    # set when its deletion began: the org is gone for the API, its layers are being let go
    deleting_at: Mapped[datetime | None] = mapped_column(default=None)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the key's public prefix
    org_id: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )  # NULL: an admin key
    secret_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class UsageRow(Base):
    """What an org holds against its quota, one row per org, changed by conditional UPDATEs."""

    __tablename__ = "quota_usage"
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    requests_cpu_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    requests_memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    limits_cpu_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    limits_memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    pods: Mapped[int] = mapped_column(Integer, default=0)
    pvcs: Mapped[int] = mapped_column(Integer, default=0)
    agents: Mapped[int] = mapped_column(Integer, default=0)
    gpus: Mapped[int] = mapped_column(Integer, default=0)


class AgentRow(Base):
    __tablename__ = "agents"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))
    busy_task: Mapped[str | None] = mapped_column(String(64))
    resources: Mapped[dict[str, Any]]
    command: Mapped[dict[str, Any]]
    public_key: Mapped[str | None] = mapped_column(String(64))
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    holds_pod: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]
    paused_at: Mapped[datetime | None]
    resumed_at: Mapped[datetime | None]
    terminated_at: Mapped[datetime | None]
    detail: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (
        # a name is its org's while the agent is not terminated (then it is free again)
        Index(
            "uq_agents_org_live_name",
            "org_id",
            "name",
            unique=True,
            sqlite_where=text("state != 'terminated'"),
            postgresql_where=text("state != 'terminated'"),
        ),
        Index("ix_agents_org_state", "org_id", "state"),
    )


class TaskRow(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    role: Mapped[str | None] = mapped_column(String(63))
    target_agent: Mapped[str | None] = mapped_column(String(128))
    agent_id: Mapped[str | None] = mapped_column(String(128))
    parent_id: Mapped[str | None] = mapped_column(String(64), index=True)
    from_agent: Mapped[str | None] = mapped_column(String(128))
    priority: Mapped[str] = mapped_column(String(16))
    deadline: Mapped[datetime | None]
    requirements: Mapped[dict[str, Any]]
    payload: Mapped[dict[str, Any]]
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float | None] = mapped_column(Float)
    not_before: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    #: the retry policy and timeouts the task was accepted with (NULL: its plan's defaults)
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: the submitter's key: a second submit with the same key gets this task back
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    #: the W3C trace context it was submitted under (NULL: not traced)
    traceparent: Mapped[str | None] = mapped_column(String(55))
    __table_args__ = (
        Index("ix_tasks_org_state", "org_id", "state"),
        Index("ix_tasks_org_seq", "org_id", "seq"),
        Index("uq_tasks_org_idempotency_key", "org_id", "idempotency_key", unique=True),
    )


class TaskEventRow(Base):
    __tablename__ = "task_events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]
    detail: Mapped[str] = mapped_column(Text, default="")
    #: the leader lease's epoch of the control plane that recorded it (None: no lease, SQLite)
    epoch: Mapped[int | None] = mapped_column(BigInteger)


class LeaderRow(Base):
    """The leader lease of replicated control planes on PostgreSQL: one row, its epoch raised
    at every takeover (see corral.store.leases)."""

    __tablename__ = "leader_lease"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    holder: Mapped[str | None] = mapped_column(String(253))
    api_url: Mapped[str | None] = mapped_column(String(2000))
    renewed_at: Mapped[datetime | None]


class AgentTransitionRow(Base):
    """Each state an agent entered, when and why: the agent's history (the console shows it)."""

    __tablename__ = "agent_transitions"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]
    detail: Mapped[str] = mapped_column(Text, default="")


class DataKeyRow(Base):
    __tablename__ = "vault_data_keys"
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


class SecretRow(Base):
    __tablename__ = "vault_secrets"
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class GrantRow(Base):
    __tablename__ = "vault_grants"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    pattern: Mapped[str] = mapped_column(String(253))
    role: Mapped[str | None] = mapped_column(String(63))
    agent_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]


class AuditRow(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(32), index=True)  # kept after the org is gone
    actor: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(253))
    allowed: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[datetime]
    detail: Mapped[str] = mapped_column(Text, default="")
