"""An org is held back once what it spent this period reaches its budget, on every backend:
its release comes when the budget is raised or the period ends, and a past period's figures
never hold it back or release it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from corral.control.gateway.catalog import ModelCatalog
from corral.control.gateway.metering import Meter
from corral.domain.budgets import Budget
from corral.observability.metrics import Metrics
from corral.store.db import Database
from corral.store.gateway_repo import GatewayStore
from corral.vault.service import Vault

DECEMBER = datetime(2026, 12, 30, tzinfo=UTC)
JANUARY = datetime(2027, 1, 1, tzinfo=UTC)


async def test_an_org_is_held_back_when_its_budget_is_spent_until_raised_or_the_period_ends(
    db: Database,
) -> None:
    store = GatewayStore(db)
    catalog = ModelCatalog(store, cast(Vault, None))  # budgets only: the vault is not asked
    meter = Meter(store, catalog, Metrics())
    released: list[str] = []
    meter.on_release = released.append
    now = DECEMBER
    meter.clock = lambda: now

    async def raise_budget(budget: Budget) -> None:
        for hook in catalog.on_budget:
            await hook("org_1", budget)

    await raise_budget(Budget(tokens=100))
    scope = await meter.org_scope("org_1", "free", now)
    role = await meter.role_scope("org_1", "writer", now)
    hold = meter.reserve((scope, role), tokens=100, cost=0)
    assert meter.held_back("org_1") is None  # held is not spent
    meter.settle(hold, tokens=60, cost=0)
    assert meter.held_back("org_1") is None
    meter.settle(meter.reserve((scope, role), tokens=40, cost=0), tokens=40, cost=0)
    why = meter.held_back("org_1")
    assert why is not None and "100 of 100 tokens used" in why and "2026-12" in why
    assert meter.held_back("org_2") is None

    await raise_budget(Budget(tokens=1000))  # raised: released at once
    assert meter.held_back("org_1") is None and released == ["org_1"]
    await raise_budget(Budget(tokens=50))  # lowered below what was spent: held back again
    assert meter.held_back("org_1") is not None

    now = JANUARY  # the period rolled over
    assert meter.held_back("org_1") is None
    meter.release_lapsed()
    assert released == ["org_1", "org_1"]
    await raise_budget(Budget(tokens=10))  # December's spending holds January back no more
    assert meter.held_back("org_1") is None
    meter.release_lapsed()
    assert released == ["org_1", "org_1"]
