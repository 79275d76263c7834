"""The model gateway as one service of the platform: its parts, its listening socket and its
background writer, started with the control plane and stopped before the store closes.

The socket is bound when the service starts — before any agent is launched — so the URL put
in every agent's ``OPENAI_BASE_URL`` is known and connections made before the HTTP server
runs wait in the listen backlog instead of failing. The HTTP face is served on it by
:mod:`corral.api.server`.
"""

from __future__ import annotations

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
from corral.domain.models import format_dollars
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
    ) -> None:
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
        self._host, self._port = host, port
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

    async def __aenter__(self) -> GatewayService:
        self.socket = _bind(self._host, self._port)
        host, port = self.socket.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        self._background.spawn(self.meter.run(), "corral-metering")
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
        return {
            "period": period,
            "budget": budget.to_wire(),
            "ownBudget": await self.catalog.own_budget(org.id) is not None,
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
