"""Quota usage: charged and released with single conditional UPDATEs, so two concurrent
reservations can never both take the last slot, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from fractions import Fraction

from sqlalchemy import ColumnElement, Table, Update, and_, bindparam, case, select, update

from corral.domain.admission import UsageSnapshot, check_quota, empty_usage
from corral.domain.errors import NotFound
from corral.domain.plans import Plan
from corral.domain.quantities import Format, Quantity
from corral.store.db import Database
from corral.store.schema import UsageRow

__all__ = ["QuotaLedger", "UsageSnapshot"]

# quota resource -> (column, how a Quantity becomes the column's integer)
_COLUMNS = {
    "requests.cpu": ("requests_cpu_milli", "milli"),
    "requests.memory": ("requests_memory_bytes", "units"),
    "limits.cpu": ("limits_cpu_milli", "milli"),
    "limits.memory": ("limits_memory_bytes", "units"),
    "pods": ("pods", "units"),
    "persistentvolumeclaims": ("pvcs", "units"),
}


_ZERO = Quantity.of(0)


def _as_int(q: Quantity, how: str) -> int:
    return q.milli if how == "milli" else q.units


#: org ids asked for in one statement (far below any database's limit on parameters)
_IN_CHUNK = 500


@functools.lru_cache(maxsize=4096)
def _as_quantity(n: int, how: str, resource: str) -> Quantity:
    """The quantity of a column's integer (the same few recur across orgs: made once each;
    a quantity is immutable)."""
    if how == "milli":
        return Quantity.of(Fraction(n, 1000))
    fmt = Format.BINARY_SI if resource.endswith("memory") else Format.DECIMAL_SI
    return Quantity.of(n, fmt)


_USAGE: Table = UsageRow.__table__  # type: ignore[assignment]


class QuotaLedger:
    def __init__(self, db: Database) -> None:
        self._db = db
        #: told the org id of every charge and release this ledger made (see :meth:`watch`)
        self._watchers: list[Callable[[str], None]] = []

    def watch(self, changed: Callable[[str], None]) -> None:
        """Call ``changed(org_id)`` after each charge or release of an org's use: a holder of
        its use (the dispatcher's snapshot) reads it again then, and only then."""
        self._watchers.append(changed)

    def _changed(self, org_id: str) -> None:
        for changed in self._watchers:
            changed(org_id)

    async def usage(self, org_id: str) -> UsageSnapshot:
        async with self._db.sessions() as s:
            row = await s.get(UsageRow, org_id)
        if row is None:
            raise NotFound(f"no usage recorded for organization {org_id!r}")
        return _snapshot(row)

    async def reserve(
        self,
        org_id: str,
        plan: Plan,
        charge: Mapping[str, Quantity],
        *,
        agents: int = 0,
        gpus: int = 0,
    ) -> None:
        """Charge ``charge`` if it fits under ``plan``; atomic against concurrent callers.

        Raises:
            QuotaExceeded: naming the resource that does not fit, with asked/used/allowed.
        """
        deltas: dict[str, int] = {}
        params: dict[str, object] = {"usage_of": org_id}
        for resource, (col, how) in _COLUMNS.items():
            d = _as_int(charge.get(resource, _ZERO), how)
            if d:
                deltas[col] = d
                params[f"most_{col}"] = _as_int(plan.quota[resource], how)
        if agents:
            deltas["agents"] = agents
            params["most_agents"] = plan.agent_limit
        if gpus:
            deltas["gpus"] = gpus
            params["most_gpus"] = plan.gpu_limit
        if not deltas:
            return
        params.update({f"add_{col}": d for col, d in deltas.items()})
        async with self._db.writing() as s:
            result = await s.execute(_charging(tuple(deltas)), params)
        if result.rowcount == 1:  # type: ignore[attr-defined]
            self._changed(org_id)
            return
        # Refused: explain with the figures as they are now (raises QuotaExceeded).
        snap = await self.usage(org_id)
        check_quota(
            plan,
            snap.used,
            charge,
            agents_used=snap.agents,
            new_agents=agents,
            gpus_used=snap.gpus,
            new_gpus=gpus,
        )
        # The competitor released in between: try once more.
        await self.reserve(org_id, plan, charge, agents=agents, gpus=gpus)

    async def release(
        self, org_id: str, charge: Mapping[str, Quantity], *, agents: int = 0, gpus: int = 0
    ) -> None:
        deltas: dict[str, int] = {}
        for resource, (col, how) in _COLUMNS.items():
            d = _as_int(charge.get(resource, _ZERO), how)
            if d:
                deltas[col] = d
        if agents:
            deltas["agents"] = agents
        if gpus:
            deltas["gpus"] = gpus
        if not deltas:
            return
        params: dict[str, object] = {f"take_{col}": d for col, d in deltas.items()}
        async with self._db.writing() as s:
            await s.execute(_releasing(tuple(deltas)), {"usage_of": org_id, **params})
        self._changed(org_id)

    async def all_usage(self) -> dict[str, UsageSnapshot]:
        async with self._db.sessions() as s:
            rows = (await s.execute(select(UsageRow))).scalars().all()
        return {r.org_id: _snapshot(r) for r in rows}

    async def usage_of(self, org_ids: Collection[str]) -> dict[str, UsageSnapshot]:
        """The use of those of ``org_ids`` that have any recorded, by org id."""
        found: dict[str, UsageSnapshot] = {}
        ids = list(org_ids)
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            async with self._db.sessions() as s:
                q = select(UsageRow).where(UsageRow.org_id.in_(chunk))
                rows = (await s.execute(q)).scalars().all()
            found.update((r.org_id, _snapshot(r)) for r in rows)
        return found


@functools.lru_cache(maxsize=64)
def _charging(columns: tuple[str, ...]) -> Update:
    """``UPDATE ... SET c = c + :add_c ... WHERE org_id = :usage_of AND c + :add_c <= :most_c
    ...``: the charge of those columns, only if each stays within its limit (built once for
    each set of columns a charge touches)."""
    conds: list[ColumnElement[bool]] = [_USAGE.c.org_id == bindparam("usage_of")]
    values: dict[str, ColumnElement[int]] = {}
    for col in columns:
        values[col] = _USAGE.c[col] + bindparam(f"add_{col}")
        conds.append(values[col] <= bindparam(f"most_{col}"))
    return update(_USAGE).where(and_(*conds)).values(**values)


@functools.lru_cache(maxsize=64)
def _releasing(columns: tuple[str, ...]) -> Update:
    """``UPDATE ... SET c = max(c - :take_c, 0) ... WHERE org_id = :usage_of``."""
    values = {col: _max0(_USAGE.c[col] - bindparam(f"take_{col}")) for col in columns}
    return update(_USAGE).where(_USAGE.c.org_id == bindparam("usage_of")).values(**values)


def _max0(expr: ColumnElement[int]) -> ColumnElement[int]:
    return case((expr < 0, 0), else_=expr)


def _snapshot(row: UsageRow) -> UsageSnapshot:
    used = empty_usage()
    for resource, (col, how) in _COLUMNS.items():
        used[resource] = _as_quantity(int(getattr(row, col)), how, resource)
    return UsageSnapshot(used, row.agents, row.gpus)
