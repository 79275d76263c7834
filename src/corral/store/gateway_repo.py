"""Persistence of the model gateway: declared models (each change written with its audit
record in one transaction), budgets, metered calls and agents' gateway credentials.

Metered calls arrive in batches from the gateway's recorder; every figure the API shows is a
``SUM`` over them, so per-task, per-agent, per-role and per-org totals always agree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.domain.budgets import Budget
from corral.domain.errors import Conflict, Unavailable
from corral.domain.models import MeteredCall, ModelEndpoint
from corral.domain.secrets import AuditEntry
from corral.store.db import Database
from corral.store.gateway_tables import (
    GatewayCredentialRow,
    ModelBudgetRow,
    ModelRow,
    ModelUsageRow,
    TaskBudgetRow,
)
from corral.store.schema import AuditRow, TaskRow

__all__ = ["GatewayStore", "TaskLink"]

#: (org id, agent id, parent task id) of a task, as the gateway needs it
TaskLink = tuple[str, str | None, str | None]
_GROUPS = {
    "role": ModelUsageRow.role,
    "model": ModelUsageRow.model,
    "agent": ModelUsageRow.agent_id,
}


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _endpoint(row: ModelRow) -> ModelEndpoint:
    return ModelEndpoint(
        org_id=row.org_id,
        name=row.name,
        base_url=row.base_url,
        key_secret=row.key_secret,
        upstream_model=row.upstream_model,
        price_in=row.price_in,
        price_out=row.price_out,
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
    )


def _audit(entry: AuditEntry) -> dict[str, Any]:
    return {
        "org_id": entry.org_id,
        "actor": entry.actor,
        "action": str(entry.action),
        "target": entry.target,
        "allowed": entry.allowed,
        "at": entry.at,
        "detail": entry.detail,
    }


class GatewayStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @asynccontextmanager
    async def _tx(self, what: str, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A transaction; ``write``: one that writes (queued with the others on SQLite)."""
        try:
            if write:
                async with self._db.writing() as s:
                    yield s
                return
            async with self._db.sessions() as s, s.begin():
                yield s
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise Unavailable(f"store unavailable while {what}: {exc}") from exc

    # -- models ---------------------------------------------------------------------------
    async def put_model(
        self, model: ModelEndpoint, *, audit: Callable[[ModelEndpoint | None], AuditEntry]
    ) -> tuple[ModelEndpoint, bool]:
        """Declare or change a model; ``audit(previous)`` gives the record written with it.
        Returns the stored model and whether it is new.

        Raises:
            Conflict: declared concurrently by another caller.
        """
        now = datetime.now(UTC)
        values = {
            "base_url": model.base_url,
            "key_secret": model.key_secret,
            "upstream_model": model.upstream_model,
            "price_in": model.price_in,
            "price_out": model.price_out,
            "updated_at": now,
        }
        try:
            async with self._tx("declaring a model", write=True) as s:
                row = await s.get(ModelRow, (model.org_id, model.name))
                previous = _endpoint(row) if row is not None else None
                if row is None:
                    s.add(ModelRow(org_id=model.org_id, name=model.name, created_at=now, **values))
                else:
                    for key, value in values.items():
                        setattr(row, key, value)
                await s.execute(insert(AuditRow).values(**_audit(audit(previous))))
        except IntegrityError:
            raise Conflict(
                f"model {model.name!r} was declared concurrently; try again",
                details={"model": model.name},
            ) from None
        found = await self.get_model(model.org_id, model.name)
        assert found is not None
        return found, previous is None

    async def get_model(self, org_id: str, name: str) -> ModelEndpoint | None:
        async with self._tx("reading a model") as s:
            row = await s.get(ModelRow, (org_id, name))
            return _endpoint(row) if row is not None else None

    async def list_models(self, org_id: str) -> list[ModelEndpoint]:
        async with self._tx("listing models") as s:
            rows = await s.scalars(
                select(ModelRow).where(ModelRow.org_id == org_id).order_by(ModelRow.name)
            )
            return [_endpoint(r) for r in rows]

    async def delete_model(self, org_id: str, name: str, *, audit: AuditEntry) -> bool:
        async with self._tx("removing a model", write=True) as s:
            gone = await s.execute(
                delete(ModelRow).where(ModelRow.org_id == org_id, ModelRow.name == name)
            )
            if not gone.rowcount:  # type: ignore[attr-defined]
                return False
            await s.execute(insert(AuditRow).values(**_audit(audit)))
            return True

    async def append_audit(self, entries: Iterable[AuditEntry]) -> None:
        rows = [_audit(e) for e in entries]
        if rows:
            async with self._tx("writing the audit log", write=True) as s:
                await s.execute(insert(AuditRow), rows)

    # -- budgets --------------------------------------------------------------------------
    async def org_budgets(self) -> dict[str, Budget]:
        async with self._tx("reading budgets") as s:
            rows = await s.scalars(select(ModelBudgetRow))
            return {r.org_id: Budget(r.tokens, r.cost) for r in rows}

    async def set_org_budget(
        self, org_id: str, budget: Budget | None, *, audit: AuditEntry
    ) -> None:
        async with self._tx("setting a budget", write=True) as s:
            await s.execute(delete(ModelBudgetRow).where(ModelBudgetRow.org_id == org_id))
            if budget is not None:
                s.add(
                    ModelBudgetRow(
                        org_id=org_id,
                        tokens=budget.tokens,
                        cost=budget.cost,
                        updated_at=datetime.now(UTC),
                    )
                )
            await s.execute(insert(AuditRow).values(**_audit(audit)))

    async def put_task_budget(self, task_id: str, org_id: str, budget: Budget) -> None:
        async with self._tx("storing a task budget", write=True) as s:
            s.add(
                TaskBudgetRow(
                    task_id=task_id, org_id=org_id, tokens=budget.tokens, cost=budget.cost
                )
            )

    async def delete_task_budget(self, task_id: str) -> None:
        async with self._tx("removing a task budget", write=True) as s:
            await s.execute(delete(TaskBudgetRow).where(TaskBudgetRow.task_id == task_id))

    async def task_budget(self, task_id: str) -> Budget | None:
        async with self._tx("reading a task budget") as s:
            row = await s.get(TaskBudgetRow, task_id)
            return Budget(row.tokens, row.cost) if row is not None else None

    async def task_link(self, task_id: str) -> TaskLink | None:
        async with self._tx("reading a task") as s:
            row = (
                await s.execute(
                    select(TaskRow.org_id, TaskRow.agent_id, TaskRow.parent_id).where(
                        TaskRow.id == task_id
                    )
                )
            ).first()
            return (row[0], row[1], row[2]) if row is not None else None

    async def subtree(self, task_id: str) -> list[str]:
        """``task_id`` and every task delegated from it, at any depth."""
        found, frontier = [task_id], [task_id]
        async with self._tx("reading delegated tasks") as s:
            while frontier:
                children = list(
                    await s.scalars(select(TaskRow.id).where(TaskRow.parent_id.in_(frontier)))
                )
                found += children
                frontier = children
        return found

    # -- metering -------------------------------------------------------------------------
    async def record_calls(self, calls: list[MeteredCall]) -> None:
        if not calls:
            return
        rows = [
            {
                "org_id": c.org_id,
                "period": f"{c.at.year:04d}-{c.at.month:02d}",
                "role": c.role,
                "agent_id": c.agent_id,
                "task_id": c.task_id,
                "model": c.model,
                "tokens_in": c.usage.tokens_in,
                "tokens_out": c.usage.tokens_out,
                "cost": c.cost,
                "at": c.at,
            }
            for c in calls
        ]
        async with self._tx("recording model usage", write=True) as s:
            await s.execute(insert(ModelUsageRow), rows)

    async def period_totals(self, period: str) -> dict[str, tuple[int, int]]:
        """Tokens and cost per org in ``period``."""
        async with self._tx("summing model usage") as s:
            rows = await s.execute(
                select(
                    ModelUsageRow.org_id,
                    func.sum(ModelUsageRow.tokens_in + ModelUsageRow.tokens_out),
                    func.sum(ModelUsageRow.cost),
                )
                .where(ModelUsageRow.period == period)
                .group_by(ModelUsageRow.org_id)
            )
            return {org: (int(t or 0), int(c or 0)) for org, t, c in rows}

    async def role_total(self, org_id: str, role: str, period: str) -> tuple[int, int]:
        """Tokens and cost of ``org_id``'s agents of ``role`` in ``period``."""
        async with self._tx("summing model usage") as s:
            row = (
                await s.execute(
                    select(
                        func.sum(ModelUsageRow.tokens_in + ModelUsageRow.tokens_out),
                        func.sum(ModelUsageRow.cost),
                    ).where(
                        ModelUsageRow.org_id == org_id,
                        ModelUsageRow.period == period,
                        ModelUsageRow.role == role,
                    )
                )
            ).one()
            return int(row[0] or 0), int(row[1] or 0)

    async def tasks_total(self, task_ids: list[str]) -> tuple[int, int]:
        """Tokens and cost metered on any of ``task_ids``."""
        async with self._tx("summing model usage") as s:
            row = (
                await s.execute(
                    select(
                        func.sum(ModelUsageRow.tokens_in + ModelUsageRow.tokens_out),
                        func.sum(ModelUsageRow.cost),
                    ).where(ModelUsageRow.task_id.in_(task_ids))
                )
            ).one()
            return int(row[0] or 0), int(row[1] or 0)

    async def usage_by(
        self, org_id: str, *, group: str, period: str | None = None, task_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Calls, tokens in/out and cost of ``org_id`` grouped by ``role``, ``model`` or
        ``agent``, optionally within one period or one task."""
        key = _GROUPS[group]
        query = select(
            key,
            func.count(),
            func.sum(ModelUsageRow.tokens_in),
            func.sum(ModelUsageRow.tokens_out),
            func.sum(ModelUsageRow.cost),
        ).where(ModelUsageRow.org_id == org_id)
        if period is not None:
            query = query.where(ModelUsageRow.period == period)
        if task_id is not None:
            query = query.where(ModelUsageRow.task_id == task_id)
        async with self._tx("summing model usage") as s:
            rows = await s.execute(query.group_by(key).order_by(key))
            return [
                {
                    group: k,
                    "calls": int(n),
                    "tokensIn": int(ti or 0),
                    "tokensOut": int(to or 0),
                    "cost": int(c or 0),
                }
                for k, n, ti, to, c in rows
            ]

    # -- gateway credentials --------------------------------------------------------------
    async def put_credential(self, agent_id: str, org_id: str, token_hash: str) -> None:
        """Store the agent's credential, replacing the one it had (one statement)."""
        now = datetime.now(UTC)
        dialect = postgresql if self._db.dialect == "postgresql" else sqlite
        values = {"token_hash": token_hash, "org_id": org_id, "created_at": now}
        upsert = dialect.insert(GatewayCredentialRow).values(agent_id=agent_id, **values)
        upsert = upsert.on_conflict_do_update(index_elements=["agent_id"], set_=values)
        async with self._tx("storing a gateway credential", write=True) as s:
            await s.execute(upsert)

    async def credential(self, token_hash: str) -> tuple[str, str] | None:
        """The (agent id, org id) a credential hash belongs to."""
        async with self._tx("reading a gateway credential") as s:
            row = (
                await s.execute(
                    select(GatewayCredentialRow.agent_id, GatewayCredentialRow.org_id).where(
                        GatewayCredentialRow.token_hash == token_hash
                    )
                )
            ).first()
            return (row[0], row[1]) if row is not None else None

    async def delete_credential(self, agent_id: str) -> None:
        async with self._tx("revoking a gateway credential", write=True) as s:
            await s.execute(
                delete(GatewayCredentialRow).where(GatewayCredentialRow.agent_id == agent_id)
            )
