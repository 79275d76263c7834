"""Declared roles, per organization: put (create or change, bumping the version only when
what its agents run with changes: a new budget alone does not), get, list and delete."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select

from corral.domain.errors import NotFound
from corral.domain.roles import Role, role_from_wire
from corral.store.db import Database
from corral.store.role_tables import RoleRow

__all__ = ["RoleRepository"]


def _role(row: RoleRow) -> Role:
    return role_from_wire(row.spec, limit_range=None, version=row.version)


def _runs(spec: dict[str, Any]) -> dict[str, Any]:
    """What of a spec its agents run with: all of it but the budget."""
    return {k: v for k, v in spec.items() if k != "budget"}


class RoleRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, org_id: str, role: Role) -> Role:
        """Store ``role``; returns it as stored (its version bumped if its spec changed)."""
        now = datetime.now(UTC)
        spec = role.to_wire()
        async with self._db.writing() as s:
            row = await s.get(RoleRow, (org_id, role.name), with_for_update=True)
            if row is None:
                row = RoleRow(
                    org_id=org_id,
                    name=role.name,
                    spec=spec,
                    version=1,
                    created_at=now,
                    updated_at=now,
                )
                s.add(row)
            elif row.spec != spec:
                if _runs(row.spec) != _runs(spec):  # a new budget rolls out no agent
                    row.version += 1
                row.spec = spec
                row.updated_at = now
            version = row.version
        return role_from_wire(spec, limit_range=None, version=version)

    async def get(self, org_id: str, name: str) -> Role:
        """Raises: NotFound: no role of that name in the org."""
        async with self._db.sessions() as s:
            row = await s.get(RoleRow, (org_id, name))
            if row is None:
                raise NotFound(f"role {name!r} not found", details={"role": name})
            return _role(row)

    async def find(self, org_id: str | None = None) -> list[tuple[str, Role]]:
        """(org id, role) of every declared role, or of one org's, by name."""
        q = select(RoleRow).order_by(RoleRow.org_id, RoleRow.name)
        if org_id is not None:
            q = q.where(RoleRow.org_id == org_id)
        async with self._db.sessions() as s:
            rows = (await s.execute(q)).scalars().all()
            return [(r.org_id, _role(r)) for r in rows]

    async def delete(self, org_id: str, name: str) -> None:
        """Raises: NotFound: no role of that name in the org."""
        async with self._db.writing() as s:
            result = await s.execute(
                delete(RoleRow).where(RoleRow.org_id == org_id, RoleRow.name == name)
            )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"role {name!r} not found", details={"role": name})
