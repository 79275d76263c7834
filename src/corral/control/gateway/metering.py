"""Metering and budgets of model calls: the ledger of every budget scope, and the recorder
that writes metered calls and refusals to the store in batches.

The ledger (:class:`~corral.domain.budgets.Ledger`) is authoritative while the control plane
runs: each scope is opened with what the store says it spent, and from then on every call is
reserved and settled in memory, so admission costs no database round trip and concurrent calls
cannot overspend. Metered calls are written a moment later by one named background task, in
batches, and on stop before the store closes; every figure shown is a sum over those rows.

An org whose period budget is spent (what it used has reached it) is *held back*: its queued
tasks wait with that reason instead of being dispatched (the dispatcher asks
:meth:`Meter.held_back`), and :attr:`Meter.on_release` tells the dispatcher when that ends —
its budget was raised, or the period rolled over (:meth:`Meter.release_lapsed`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import Counter

from corral.control.gateway.catalog import ModelCatalog
from corral.domain.budgets import UNLIMITED, Budget, Hold, Ledger, Scope, period_of
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
        #: orgs whose period budget is spent: org id → (period, why)
        self._exhausted: dict[str, tuple[str, str]] = {}
        #: told an org id when its tasks may be dispatched again
        self.on_release: Callable[[str], None] = lambda org_id: None
        #: a role's budget as declared now (``None``: it has none)
        self.role_budget: Callable[[str, str], Budget | None] = lambda org_id, role: None
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
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
                self._check(scope)
        else:
            self._scope_plans[scope] = plan
            await self._open_org(scope, await self._catalog.period_budget(org_id, plan))
        return scope

    async def _open_org(self, scope: Scope, budget: Budget) -> None:
        org_id, _, period = scope[1].partition(":")
        totals = self._loaded_periods.get(period)
        if totals is None:
            totals = await self._store.period_totals(period)
            self._loaded_periods[period] = totals
        tokens, cost = totals.get(org_id, (0, 0))
        self.ledger.open(scope, budget, used_tokens=tokens, used_cost=cost)
        self._check(scope)

    async def role_scope(self, org_id: str, role: str, now: datetime) -> Scope:
        """The role's scope for this period, kept whether or not it has a budget (so that
        a budget declared later holds what the role spent before)."""
        period = period_of(now)
        scope: Scope = ("role", f"{org_id}:{role}:{period}")
        budget = self.role_budget(org_id, role) or UNLIMITED
        if self.ledger.knows(scope):
            self.ledger.set_budget(scope, budget)
        else:
            tokens, cost = await self._store.role_total(org_id, role, period)
            self.ledger.open(scope, budget, used_tokens=tokens, used_cost=cost)
        return scope

    # -- orgs held back -------------------------------------------------------------------
    async def check_orgs(self, plans: dict[str, str]) -> None:
        """On start: hold back every org (id → plan) whose budget this period is spent."""
        period = period_of(self.now())
        totals = self._loaded_periods.get(period)
        if totals is None:
            totals = self._loaded_periods[period] = await self._store.period_totals(period)
        for org_id in totals.keys() & plans.keys():
            await self.org_scope(org_id, plans[org_id], self.now())

    def held_back(self, org_id: str) -> str | None:
        """Why ``org_id``'s queued tasks may not be dispatched now, or ``None``."""
        held = self._exhausted.get(org_id)
        if held is None or held[0] != period_of(self.now()):
            return None
        return held[1]

    def release_lapsed(self) -> None:
        """Release the orgs held back in a period that has ended."""
        period = period_of(self.now())
        for org_id, held in list(self._exhausted.items()):
            if held[0] != period:
                del self._exhausted[org_id]
                self.on_release(org_id)

    def _check(self, scope: Scope) -> None:
        """Hold the org back if its budget for this period is spent; release it if no longer
        (a past period's scope, which a budget change also sets, holds nothing back)."""
        if scope[0] != "org":
            return
        org_id, _, period = scope[1].partition(":")
        if period != period_of(self.now()):
            return
        why = self.ledger.exhausted(scope)
        if why is not None:
            self._exhausted[org_id] = (
                period,
                f"{why}; its tasks start again when the budget is raised or the period ends",
            )
        elif self._exhausted.get(org_id, ("",))[0] == period:
            del self._exhausted[org_id]
            self.on_release(org_id)

    def settle(self, hold: Hold, *, tokens: int, cost: int) -> None:
        """Charge what a call used in place of its hold; an org whose budget this spends is
        held back."""
        self.ledger.settle(hold, tokens=tokens, cost=cost)
        self._check(hold.scopes[0])

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

    async def _budget_changed(self, org_id: str, budget: Budget) -> None:
        for period in self._loaded_periods:
            scope: Scope = ("org", f"{org_id}:{period}")
            self.ledger.set_budget(scope, budget)
            self._check(scope)
        current: Scope = ("org", f"{org_id}:{period_of(self.now())}")
        if not self.ledger.knows(current):  # a budget set below what was spent holds it back
            await self._open_org(current, budget)

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

    def now(self) -> datetime:
        return self.clock()
