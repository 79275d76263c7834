"""The agent registry (the seed's Firestore documents, here rows).

The calls a provision makes (create, get, update, the state changes) are plain SQL statements
on the tables, built once where they can be, not ORM units of work: a hundred agents
provisioned at once make a thousand of them, each on the control plane's one event loop.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, Table, Update, bindparam, case, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from corral.domain.admission import AdmittedResources
from corral.domain.agents import Agent, AgentState
from corral.domain.errors import Conflict, NotFound
from corral.domain.ids import AgentId
from corral.domain.quantities import parse
from corral.store.db import Database
from corral.store.schema import AgentRow, AgentTransitionRow, OrgRow

__all__ = ["AgentRepository", "resources_from_json", "resources_to_json"]


def resources_to_json(r: AdmittedResources) -> dict[str, Any]:
    return {
        "cpu_request": r.cpu_request.render(),
        "cpu_limit": r.cpu_limit.render(),
        "memory_request": r.memory_request.render(),
        "memory_limit": r.memory_limit.render(),
        "gpu": r.gpu,
    }


#: the few quantities agents are given, parsed once each (a Quantity is immutable)
_parse = functools.lru_cache(maxsize=256)(parse)


def resources_from_json(d: dict[str, Any]) -> AdmittedResources:
    return AdmittedResources(
        _parse(d["cpu_request"]),
        _parse(d["cpu_limit"]),
        _parse(d["memory_request"]),
        _parse(d["memory_limit"]),
        int(d.get("gpu", 0)),
    )


def _utc(v: datetime | None) -> datetime | None:
    if v is None:
        return None
    return v if v.tzinfo else v.replace(tzinfo=UTC)


_AGENTS: Table = AgentRow.__table__  # type: ignore[assignment]
_HISTORY: Table = AgentTransitionRow.__table__  # type: ignore[assignment]
_ORGS: Table = OrgRow.__table__  # type: ignore[assignment]
_WITH_SLUG = select(_AGENTS, _ORGS.c.slug).join(_ORGS, _ORGS.c.id == _AGENTS.c.org_id)
_BY_ID = _WITH_SLUG.where(_AGENTS.c.id == bindparam("agent_id"))
_BY_ID_IN_ORG = _BY_ID.where(_AGENTS.c.org_id == bindparam("org_id"))
_SEEN = (
    update(_AGENTS)
    .where(_AGENTS.c.id == bindparam("agent"))
    .values(last_seen_at=bindparam("at"), updated_at=bindparam("at"))
)
_NOTE = insert(_HISTORY)
#: the states an agent reports ready from
_STARTING = (AgentState.PROVISIONING.value, AgentState.RESUMING.value)


def _move(
    agent_id: str, expect: Iterable[AgentState], to: AgentState, fields: Mapping[str, Any]
) -> tuple[Update, dict[str, Any]]:
    """The compare-and-set of a move to ``to`` (with ``fields``) and its history row (its
    detail, if the move sets one)."""
    now = datetime.now(UTC)
    move = (
        update(_AGENTS)
        .where(_AGENTS.c.id == agent_id, _AGENTS.c.state.in_([e.value for e in expect]))
        .values(state=to.value, updated_at=now, **fields)
    )
    detail = fields.get("detail")
    note = {
        "agent_id": agent_id,
        "state": to.value,
        "at": now,
        "detail": detail if isinstance(detail, str) else "",
    }
    return move, note


def _agent(row: AgentRow | Row[Any], slug: str) -> Agent:
    return Agent(
        id=AgentId(row.id),
        org_id=row.org_id,
        org=slug,
        name=row.name,
        role=row.role,
        state=AgentState(row.state),
        resources=resources_from_json(row.resources),
        command=tuple(row.command.get("argv", [])),
        busy_task=row.busy_task,
        restarts=row.restarts,
        public_key=row.public_key,
        created_at=_utc(row.created_at) or datetime.now(UTC),
        updated_at=_utc(row.updated_at) or datetime.now(UTC),
        last_seen_at=_utc(row.last_seen_at),
        paused_at=_utc(row.paused_at),
        resumed_at=_utc(row.resumed_at),
        terminated_at=_utc(row.terminated_at),
        detail=row.detail,
        slots=int(row.command.get("slots", 1)),
        env=dict(row.command.get("env") or {}),
        role_version=row.command.get("roleVersion"),
    )


class AgentRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        *,
        agent_id: str,
        org_id: str,
        org: str,
        name: str,
        role: str,
        resources: AdmittedResources,
        command: Iterable[str],
        slots: int = 1,
        env: Mapping[str, str] | None = None,
        role_version: int | None = None,
        public_key: str | None = None,
    ) -> Agent:
        """Record a new agent of ``org`` (its slug; ``org_id`` its id), ``provisioning``;
        returns it as recorded.

        Raises:
            Conflict: the org has a live agent of that name.
        """
        now = datetime.now(UTC)
        argv = list(command)
        program: dict[str, Any] = {"argv": argv, "slots": slots}
        if env:
            program["env"] = dict(env)
        if role_version is not None:
            program["roleVersion"] = role_version
        state = AgentState.PROVISIONING.value
        try:
            async with self._db.writing() as s:
                await s.execute(
                    insert(_AGENTS).values(
                        id=agent_id,
                        org_id=org_id,
                        name=name,
                        role=role,
                        state=state,
                        busy_task=None,
                        resources=resources_to_json(resources),
                        command=program,
                        public_key=public_key,
                        restarts=0,
                        holds_pod=True,
                        created_at=now,
                        updated_at=now,
                        detail="",
                    )
                )  # the agent's row first: its history points at it
                await s.execute(
                    _NOTE, {"agent_id": agent_id, "state": state, "at": now, "detail": ""}
                )
        except IntegrityError as exc:
            raise Conflict(
                f"an agent named {name!r} already exists in this organization",
                details={"name": name},
            ) from exc
        return Agent(
            id=AgentId(agent_id),
            org_id=org_id,
            org=org,
            name=name,
            role=role,
            state=AgentState.PROVISIONING,
            resources=resources,
            command=tuple(argv),
            busy_task=None,
            restarts=0,
            public_key=public_key,
            created_at=now,
            updated_at=now,
            slots=slots,
            env=dict(env or {}),
            role_version=role_version,
        )

    async def get(self, agent_id: str, *, org_id: str | None = None) -> Agent:
        if org_id is None:
            q, params = _BY_ID, {"agent_id": agent_id}
        else:
            q, params = _BY_ID_IN_ORG, {"agent_id": agent_id, "org_id": org_id}
        async with self._db.sessions() as s:
            row = (await s.execute(q, params)).first()
        if row is None:
            raise NotFound(f"agent {agent_id!r} not found", details={"agent": agent_id})
        return _agent(row, row.slug)

    async def resolve(self, ref: str, *, org_id: str) -> Agent:
        """The org's agent whose id is ``ref``, or else its live (not terminated) agent named
        ``ref``.

        Raises:
            NotFound: neither.
        """
        async with self._db.sessions() as s:
            q = select(AgentRow, OrgRow.slug).join(OrgRow, OrgRow.id == AgentRow.org_id)
            q = q.where(AgentRow.org_id == org_id)
            row = (await s.execute(q.where(AgentRow.id == ref))).first()
            if row is None:
                live = AgentRow.state != AgentState.TERMINATED.value
                row = (await s.execute(q.where(AgentRow.name == ref, live))).first()
        if row is None:
            raise NotFound(f"agent {ref!r} not found", details={"agent": ref})
        return _agent(row[0], row[1])

    async def find(
        self,
        *,
        org_id: str | None = None,
        states: Iterable[AgentState] | None = None,
        search: str | None = None,
        newest: int | None = None,
    ) -> list[Agent]:
        """Agents oldest first; ``search``: whose name or id contains it; ``newest``: only
        the newest so many of those."""
        q = _WITH_SLUG
        if org_id is not None:
            q = q.where(_AGENTS.c.org_id == org_id)
        if states is not None:
            q = q.where(_AGENTS.c.state.in_([s.value for s in states]))
        if search:
            q = q.where(
                _AGENTS.c.name.contains(search, autoescape=True)
                | _AGENTS.c.id.contains(search, autoescape=True)
            )
        if newest is None:
            q = q.order_by(_AGENTS.c.created_at)
        else:
            q = q.order_by(_AGENTS.c.created_at.desc()).limit(newest)
        async with self._db.sessions() as s:
            rows = (await s.execute(q)).all()
        found = [_agent(r, r.slug) for r in rows]
        return found if newest is None else found[::-1]

    async def transition(
        self,
        agent_id: str,
        *,
        expect: Iterable[AgentState],
        to: AgentState,
        **fields: Any,
    ) -> bool:
        """Compare-and-set the state, noted in the agent's history; False when the agent was
        not in ``expect``."""
        move, note = _move(agent_id, expect, to, fields)
        async with self._db.writing() as s:
            moved = bool((await s.execute(move)).rowcount)  # type: ignore[attr-defined]
            if moved:
                await s.execute(_NOTE, note)
        return moved

    async def moved(
        self,
        agent_id: str,
        *,
        org: str,
        expect: Iterable[AgentState],
        to: AgentState,
        **fields: Any,
    ) -> Agent | None:
        """:meth:`transition` that returns the agent as it now is (``org``: its slug), read
        in the same statement that moved it; None when the agent was not in ``expect``."""
        move, note = _move(agent_id, expect, to, fields)
        async with self._db.writing() as s:
            row = (await s.execute(move.returning(_AGENTS))).first()
            if row is None:
                return None
            await s.execute(_NOTE, note)
        return _agent(row, org)

    async def to_running(self, agent_id: str, *, org: str, at: datetime) -> Agent | None:
        """Compare-and-set ``provisioning`` or ``resuming`` → ``running`` for the agent of
        ``org`` (its slug), heard from ``at`` (and resumed then, if it was resuming), noted in
        its history; returns the agent as it now is, or None when no agent of ``org`` by that
        id was in either state."""
        resuming = _AGENTS.c.state == AgentState.RESUMING.value
        running = AgentState.RUNNING.value
        org_id = select(_ORGS.c.id).where(_ORGS.c.slug == org).scalar_subquery()
        async with self._db.writing() as s:
            row = (
                await s.execute(
                    update(_AGENTS)
                    .where(
                        _AGENTS.c.id == agent_id,
                        _AGENTS.c.org_id == org_id,
                        _AGENTS.c.state.in_(_STARTING),
                    )
                    .values(
                        state=running,
                        updated_at=at,
                        last_seen_at=at,
                        resumed_at=case((resuming, at), else_=_AGENTS.c.resumed_at),
                    )
                    .returning(_AGENTS)
                )
            ).first()
            if row is None:
                return None
            await s.execute(_NOTE, {"agent_id": agent_id, "state": running, "at": at, "detail": ""})
        return _agent(row, org)

    async def history(self, agent_id: str, *, newest: int = 50) -> list[tuple[str, datetime, str]]:
        """The newest states ``agent_id`` entered (state, when, why), oldest first."""
        q = (
            select(AgentTransitionRow.state, AgentTransitionRow.at, AgentTransitionRow.detail)
            .where(AgentTransitionRow.agent_id == agent_id)
            .order_by(AgentTransitionRow.id.desc())
            .limit(newest)
        )
        async with self._db.sessions() as s:
            rows = (await s.execute(q)).all()
        return [(r[0], _utc(r[1]) or r[1], r[2]) for r in reversed(rows)]

    async def update(self, agent_id: str, **fields: Any) -> None:
        async with self._db.writing() as s:
            await s.execute(
                update(_AGENTS)
                .where(_AGENTS.c.id == agent_id)
                .values(updated_at=datetime.now(UTC), **fields)
            )

    async def seen(self, heard: Mapping[str, datetime]) -> None:
        """Record when each agent (id → time) was last heard from, in one statement."""
        if heard:
            async with self._db.writing() as s:
                await s.execute(_SEEN, [{"agent": a, "at": at} for a, at in heard.items()])

    async def delete(self, agent_id: str) -> None:
        """Remove the record entirely (only to undo a provision that never happened)."""
        async with self._db.writing() as s:
            await s.execute(delete(AgentRow).where(AgentRow.id == agent_id))

    async def count_by_state(self) -> list[tuple[str, str, str, int]]:
        """(org slug, plan, state, count) for metrics."""
        q = (
            select(OrgRow.slug, OrgRow.plan, AgentRow.state, func.count())
            .join(OrgRow, OrgRow.id == AgentRow.org_id)
            .group_by(OrgRow.slug, OrgRow.plan, AgentRow.state)
        )
        async with self._db.sessions() as s:
            rows = (await s.execute(q)).all()
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]
