"""Budgets and prices: a reservation is all-or-nothing, settling replaces it by actual use,
and prices and costs are exact integers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral.domain.budgets import Budget, Ledger, budget_from_wire, limits_for_plan, period_of
from corral.domain.errors import BudgetExceeded, InvalidInput
from corral.domain.models import (
    ModelEndpoint,
    Usage,
    format_dollars,
    parse_dollars,
    parse_price,
    validate_base_url,
    validate_model_name,
)

ORG = ("org", "org_1:2026-12")
TASK = ("task", "task_1")


def test_a_reservation_is_refused_when_it_could_go_over_and_nothing_is_held() -> None:
    ledger = Ledger()
    ledger.open(ORG, Budget(tokens=100))
    ledger.open(TASK, Budget(tokens=1000))
    first = ledger.reserve((ORG, TASK), tokens=60, cost=0)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve((TASK, ORG), tokens=41, cost=0)
    assert refused.value.details["committedTokens"] == 60
    ledger.settle(first, tokens=10, cost=0)
    assert ledger.spent(ORG) == (10, 0) and ledger.spent(TASK) == (10, 0)
    ledger.reserve((ORG, TASK), tokens=90, cost=0)  # exactly up to the budget
    with pytest.raises(BudgetExceeded):
        ledger.reserve((ORG,), tokens=1, cost=0)


def test_settling_twice_charges_once_and_cost_budgets_hold() -> None:
    ledger = Ledger()
    ledger.open(ORG, Budget(cost=parse_dollars("0.001", what="cost")), used_cost=0)
    hold = ledger.reserve((ORG,), tokens=5, cost=600_000_000)
    ledger.settle(hold, tokens=5, cost=500_000_000)
    ledger.settle(hold, tokens=5, cost=500_000_000)
    assert ledger.spent(ORG) == (5, 500_000_000)
    with pytest.raises(BudgetExceeded, match=r"cost budget would be exceeded: \$0.0005 of \$0.001"):
        ledger.reserve((ORG,), tokens=1, cost=500_000_001)


def test_prices_and_costs_are_exact() -> None:
    price_in, price_out = parse_price("0.15", what="in"), parse_price(0.6, what="out")
    model = ModelEndpoint("o", "m", "http://x", "k", "m", price_in, price_out)
    cost = model.cost(Usage(1_000_000, 2_000_000))
    assert format_dollars(cost) == "1.35"
    assert format_dollars(model.cost(Usage(28, 15))) == "0.0000132"
    for bad in ("-1", "abc", "0.0000001", "2000000"):
        with pytest.raises(InvalidInput):
            parse_price(bad, what="price")


def test_names_urls_periods_and_plan_limits() -> None:
    assert validate_model_name("llama3.1:8b") == "llama3.1:8b"
    with pytest.raises(InvalidInput):
        validate_model_name("../x")
    assert validate_base_url("http://127.0.0.1:9/v1/") == "http://127.0.0.1:9/v1"
    for bad in ("ftp://x", "http://user:pw@x/v1", "http://x/v1?key=1"):
        with pytest.raises(InvalidInput):
            validate_base_url(bad)
    assert period_of(datetime(2026, 3, 31, 23, 59, tzinfo=UTC)) == "2026-03"
    assert limits_for_plan("free").period.tokens == 1_000_000
    assert limits_for_plan("an-operators-plan") == limits_for_plan("standard")


def test_a_scope_is_exhausted_once_what_it_spent_reaches_its_budget() -> None:
    ledger = Ledger()
    role = ("role", "org_1:writer:2026-12")
    ledger.open(ORG, Budget(tokens=100), used_tokens=40)
    ledger.open(role, Budget(cost=10))
    assert ledger.exhausted(ORG) is None and ledger.exhausted(role) is None
    hold = ledger.reserve((ORG, role), tokens=60, cost=10)
    assert ledger.exhausted(ORG) is None  # held is not spent
    ledger.settle(hold, tokens=60, cost=10)
    assert ledger.exhausted(ORG) == (
        "organization org_1's 2026-12 model budget is spent: 100 of 100 tokens used"
    )
    assert "role writer's 2026-12 model budget is spent" in (ledger.exhausted(role) or "")
    with pytest.raises(BudgetExceeded, match="role writer's 2026-12 cost budget"):
        ledger.reserve((role,), tokens=0, cost=1)
    ledger.set_budget(ORG, Budget(tokens=200))
    assert ledger.exhausted(ORG) is None
    assert ledger.exhausted(("org", "unknown")) is None


def test_a_budget_reads_from_its_wire_shape_and_says_what_is_left() -> None:
    assert budget_from_wire(None) is None and budget_from_wire({}) is None
    budget = budget_from_wire({"tokens": 10, "cost": "0.5"})
    assert budget == Budget(10, 500_000_000_000)
    assert budget.left(4, 100_000_000_000) == {"tokens": 6, "cost": "0.4"}
    assert budget.left(40, 10**15) == {"tokens": 0, "cost": "0"}
    assert Budget().left(5, 5) == {"tokens": None, "cost": None}
    with pytest.raises(InvalidInput, match="budget.tokens"):
        budget_from_wire({"tokens": "ten"})
