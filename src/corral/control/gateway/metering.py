"""Metering and budgets of model calls: the ledger of every budget scope, and the recorder
that writes metered calls and refusals to the store in batches.

The ledger (:class:`~corral.domain.budgets.Ledger`) is authoritative while the control plane
runs: each scope is opened with what the store says it spent, and from then on every call is
reserved and settled in memory, so admission costs no database round trip and concurrent calls
cannot overspend. Metered calls are written a moment later by one named background task, in
batches, and on stop before the store closes; every figure shown is a sum over those rows.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from prometheus_client import Counter

from corral.control.gateway.catalog import ModelCatalog
from corral.domain.budgets import Budget, Hold, Ledger, Scope, period_of
from corral.domain.models import PICO_PER_DOLLAR, MeteredCall
from corral.domain.secrets import AuditEntry
from corral.observability.metrics import Metrics
from corral.store.gateway_repo import GatewayStore

__all__ = ["Meter"]

log = logging.getLogger("corral.gateway")

_BATCH = 5000
_PAUSE = 0.2


class Meter:
    def __init__(self, store: GatewayStore, catalog: ModelCatalog, metrics: Metrics) -> None:
        self._store = store
        self._catalog = catalog
        self.ledger = Ledger()
        self._loaded_periods: dict[str, dict[str, tuple[int, int]]] = {}
        self._task_budgets: dict[str, Budget | None] = {}
        self._scope_plans: dict[Scope, str] = {}
        self._calls: list[MeteredCall] = []
        self._audits: list[AuditEntry] = []
        self._wake = asyncio.Event()
        self._stopping = False
        catalog.on_budget.append(self._budget_changed)
        registry = metrics.registry
        self.calls = Counter(
            "corral_model_calls",
            "Model calls through the gateway, by org, model and outcome",
            ["org", "model", "outcome"],
            registry=registry,
        )
        self.tokens = Counter(
            "corral_model_tokens",
            "Tokens metered through the gateway, by org, model and direction (in, out)",
            ["org", "model", "direction"],
            registry=registry,
        )
        self.cost = Counter(
            "corral_model_cost_dollars",
            "Cost of model calls through the gateway, in dollars, by org and model",
            ["org", "model"],
            registry=registry,
        )
        self.refusals = Counter(
            "corral_model_refusals",
            "Gateway calls refused, by org and reason",
            ["org", "reason"],
            registry=registry,
        )

    # -- scopes ---------------------------------------------------------------------------
    async def org_scope(self, org_id: str, plan: str, now: datetime) -> Scope:
        period = period_of(now)
        scope: Scope = ("org", f"{org_id}:{period}")
        if self.ledger.knows(scope):
            if self._scope_plans.get(scope, plan) != plan:  # the org changed plans
                self.ledger.set_budget(scope, await self._catalog.period_budget(org_id, plan))
                self._scope_plans[scope] = plan
        else:
            self._scope_plans[scope] = plan
            totals = self._loaded_periods.get(period)
            if totals is None:
                totals = await self._store.period_totals(period)
                self._loaded_periods[period] = totals
            budget = await self._catalog.period_budget(org_id, plan)
            tokens, cost = totals.get(org_id, (0, 0))
            self.ledger.open(scope, budget, used_tokens=tokens, used_cost=cost)
        return scope

    async def task_scope(self, task_id: str) -> Scope | None:
        """The task's own budget scope, or None if it was given no budget."""
        if task_id not in self._task_budgets:
            self._task_budgets[task_id] = await self._store.task_budget(task_id)
        budget = self._task_budgets[task_id]
        if budget is None:
            return None
        scope: Scope = ("task", task_id)
        if not self.ledger.knows(scope):
            tokens, cost = await self._store.tasks_total(await self._store.subtree(task_id))
            self.ledger.open(scope, budget, used_tokens=tokens, used_cost=cost)
        return scope

    def _budget_changed(self, org_id: str, budget: Budget) -> None:
        for period in self._loaded_periods:
            self.ledger.set_budget(("org", f"{org_id}:{period}"), budget)

    def reserve(self, scopes: tuple[Scope, ...], *, tokens: int, cost: int) -> Hold:
        return self.ledger.reserve(scopes, tokens=tokens, cost=cost)

    # -- recording ------------------------------------------------------------------------
    def record(self, call: MeteredCall, org_slug: str) -> None:
        self._calls.append(call)
        self.calls.labels(org_slug, call.model, "ok").inc()
        self.tokens.labels(org_slug, call.model, "in").inc(call.usage.tokens_in)
        self.tokens.labels(org_slug, call.model, "out").inc(call.usage.tokens_out)
        self.cost.labels(org_slug, call.model).inc(call.cost / PICO_PER_DOLLAR)
        self._wake.set()

    def refused(self, entry: AuditEntry | None, *, org_slug: str, reason: str) -> None:
        self.refusals.labels(org_slug, reason).inc()
        if entry is not None:
            self._audits.append(entry)
            self._wake.set()

    async def run(self) -> None:
        """Write what was metered, a batch at most every :data:`_PAUSE` seconds, until
        stopped (:meth:`flush` then writes the rest)."""
        while not self._stopping:
            await self._wake.wait()
            await asyncio.sleep(_PAUSE)  # let a batch gather
            self._wake.clear()
            try:
                await self._write_once()
            except Exception:
                log.exception("could not record model calls; retrying")
                self._wake.set()

    async def flush(self) -> None:
        """Write every metered call and refusal held now (before a read, and on stop)."""
        while self._calls or self._audits:
            await self._write_once()

    async def _write_once(self) -> None:
        calls, self._calls = self._calls[:_BATCH], self._calls[_BATCH:]
        audits, self._audits = self._audits[:_BATCH], self._audits[_BATCH:]
        try:
            await self._store.record_calls(calls)
            calls = []
            await self._store.append_audit(audits)
        except BaseException:
            self._calls[:0], self._audits[:0] = calls, audits  # kept for the next write
            raise
        if self._calls or self._audits:
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)
