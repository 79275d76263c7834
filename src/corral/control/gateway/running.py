"""The model gateway as one service of the platform: its parts, its listening socket and its
background writer, started with the control plane and stopped before the store closes.

The socket is bound when the service starts — before any agent is launched — so the URL put
in every agent's ``OPENAI_BASE_URL`` is known and connections made before the HTTP server
runs wait in the listen backlog instead of failing. The HTTP face is served on it by
:mod:`corral.api.server`.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from corral.control.background import Background
from corral.control.gateway.calls import ModelGateway
from corral.control.gateway.catalog import ModelCatalog
from corral.control.gateway.credentials import GatewayCredentials
from corral.control.gateway.metering import Meter
from corral.domain.agents import Agent
from corral.domain.budgets import Budget, period_of
from corral.domain.errors import InvalidInput
from corral.domain.ids import OrgId
from corral.domain.models import format_dollars
from corral.domain.roles import Role
from corral.domain.secrets import AuditAction
from corral.domain.tenancy import Organization
from corral.observability.metrics import Metrics
from corral.providers.openai_compat import Upstreams
from corral.store.agents import AgentRepository
from corral.store.db import Database
from corral.store.gateway_repo import GatewayStore
from corral.vault.service import Vault

__all__ = ["GatewayService"]


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class GatewayService:
    def __init__(
        self,
        db: Database,
        vault: Vault,
        metrics: Metrics,
        agents: AgentRepository,
        org_lookup: Callable[[str], Awaitable[Organization]],
        *,
        host: str,
        port: int,
        prefer: int | None = None,
    ) -> None:
        """``port`` 0 takes ``prefer`` if it is free, else any free port."""
        self.store = GatewayStore(db)
        self.catalog = ModelCatalog(self.store, vault)
        self.meter = Meter(self.store, self.catalog, metrics)
        self.credentials = GatewayCredentials(self.store, agents, org_lookup)
        self._upstreams = Upstreams()
        self._current_task: Callable[[str], str | None] = lambda agent_id: None
        self.gateway = ModelGateway(
            credentials=self.credentials,
            catalog=self.catalog,
            meter=self.meter,
            store=self.store,
            upstreams=self._upstreams,
            audit_entry=vault.audit.entry,
            current_task=lambda agent_id: self._current_task(agent_id),
        )
        self._host, self._port, self._prefer = host, port, prefer
        self._audit_entry = vault.audit.entry
        self._roles: Callable[[str], list[Role]] = lambda org_id: []
        self._background = Background()
        self.socket: socket.socket
        self.url: str

    @property
    def port(self) -> int:
        """The gateway's TCP port: the one port of the platform besides the bus agents reach."""
        return int(self.socket.getsockname()[1])

    def follow_tasks(self, current_task: Callable[[str], str | None]) -> None:
        """Where the gateway learns which task an agent is busy with (calls not tagged)."""
        self._current_task = current_task

    def follow_roles(
        self, role: Callable[[str, str], Role | None], roles: Callable[[str], list[Role]]
    ) -> None:
        """Where the gateway reads each role's budget (as declared now)."""

        def budget(org_id: str, name: str) -> Budget | None:
            found = role(org_id, name)
            return found.budget if found is not None else None

        self.meter.role_budget = budget
        self._roles = roles

    async def role_budget_changed(
        self, org: Organization, role: str, budget: Budget | None, *, actor: str
    ) -> None:
        """Audit a role's budget set, changed or dropped (in force from its next call)."""
        shown = "none" if budget is None else str(budget.to_wire())
        entry = self._audit_entry(
            OrgId(org.id),
            actor=actor,
            action=AuditAction.MODEL_BUDGET,
            target=f"role:{role}",
            allowed=True,
            detail=f"role {role}'s period budget set to {shown}",
        )
        await self.store.append_audit([entry])

    async def _periods(self) -> None:
        """Release the orgs held back for a spent budget once their period has ended."""
        while True:
            await asyncio.sleep(1.0)
            self.meter.release_lapsed()

    def _listen(self) -> socket.socket:
        if self._port == 0 and self._prefer:  # the port agents left running were given
            try:
                return _bind(self._host, self._prefer)
            except OSError:
                pass  # taken meanwhile: any other, and those agents are restarted
        return _bind(self._host, self._port)

    async def __aenter__(self) -> GatewayService:
        self.socket = self._listen()
        host, port = self.socket.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        self._background.spawn(self.meter.run(), "corral-metering")
        self._background.spawn(self._periods(), "corral-budget-periods")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.meter.stop()
        await self._background.close()
        await self.meter.flush()
        await self.credentials.close()
        await self._upstreams.close()
        self.socket.close()

    async def agent_env(
        self, org: Organization, agent: Agent
    ) -> tuple[dict[str, str], Callable[[], Awaitable[None]]]:
        """The launch hook: a fresh gateway credential for ``agent`` and how to revoke it."""
        token = await self.credentials.mint(org, agent)
        env = {"OPENAI_BASE_URL": f"{self.url}/v1", "OPENAI_API_KEY": token}

        async def revoke() -> None:
            await self.credentials.revoke(agent.id)

        return env, revoke

    def agent_changed(self, agent: Agent) -> None:
        self.credentials.agent_changed(agent)

    # -- what the API shows ---------------------------------------------------------------
    async def usage(self, org: Organization, *, period: str | None = None) -> dict[str, Any]:
        """The org's model usage in ``period`` (default: this one): its budget and what was
        spent and held against it, and calls, tokens and cost per role, model and agent."""
        await self.meter.flush()
        now = self.meter.now()
        period = period or period_of(now)
        if not _PERIOD.match(period):
            raise InvalidInput(f"period {period!r} must be a month like 2026-12")
        budget = await self.catalog.period_budget(org.id, org.plan.name)
        groups = {
            f"by{group.title()}": [
                _money(row) for row in await self.store.usage_by(org.id, group=group, period=period)
            ]
            for group in ("role", "model", "agent")
        }
        tokens_in = sum(r["tokensIn"] for r in groups["byModel"])
        tokens_out = sum(r["tokensOut"] for r in groups["byModel"])
        cost = sum(r["costPico"] for r in groups["byModel"])
        limits = self.catalog.limits(org.plan.name)
        groups["byRole"] = self._role_budgets(org, groups["byRole"])
        held = self.meter.held_back(org.id) if period == period_of(now) else None
        return {
            "period": period,
            "budget": budget.to_wire(),
            "left": budget.left(tokens_in + tokens_out, cost),
            "ownBudget": await self.catalog.own_budget(org.id) is not None,
            "heldBack": held,
            "limits": limits.to_wire(),
            "total": {
                "calls": sum(r["calls"] for r in groups["byModel"]),
                "tokensIn": tokens_in,
                "tokensOut": tokens_out,
                "tokens": tokens_in + tokens_out,
                "cost": format_dollars(cost),
                "costPico": cost,
            },
            **groups,
        }

    def _role_budgets(self, org: Organization, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each role's row with its budget and what is left of it; declared roles with a
        budget and no calls yet are listed too."""
        declared = {r.name: r.budget for r in self._roles(org.id)}
        seen = {row["role"] for row in rows}
        rows = rows + [
            _money({"role": name, "calls": 0, "tokensIn": 0, "tokensOut": 0, "cost": 0})
            for name, budget in declared.items()
            if budget is not None and name not in seen
        ]
        for row in rows:
            budget = declared.get(row["role"])
            row["budget"] = None if budget is None else budget.to_wire()
            row["left"] = (
                None
                if budget is None
                else budget.left(row["tokensIn"] + row["tokensOut"], row["costPico"])
            )
        return sorted(rows, key=lambda r: str(r["role"]))

    async def task_usage(self, org: Organization, task_id: str) -> dict[str, Any]:
        """Calls, tokens and cost metered on one task, per model, and its budget if any."""
        await self.meter.flush()
        rows = [
            _money(r) for r in await self.store.usage_by(org.id, group="model", task_id=task_id)
        ]
        budget = await self.store.task_budget(task_id)
        return {
            "byModel": rows,
            "tokens": sum(r["tokensIn"] + r["tokensOut"] for r in rows),
            "cost": format_dollars(sum(r["costPico"] for r in rows)),
            "budget": budget.to_wire() if budget is not None else None,
        }

    async def set_task_budget(
        self, org: Organization, task_id: str, budget: Budget
    ) -> Callable[[], Awaitable[None]]:
        """Store a budget for a task about to be submitted; returns its undo."""
        for value in (budget.tokens, budget.cost):
            if value is not None and value < 0:
                raise InvalidInput("a task budget must not be negative")
        await self.store.put_task_budget(task_id, org.id, budget)
        return lambda: self.store.delete_task_budget(task_id)


_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _money(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "cost": format_dollars(row["cost"]), "costPico": row["cost"]}
