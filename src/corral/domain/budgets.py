"""Model budgets: what an org, a task and its delegated children may spend, and the ledger
that guarantees they never do more.

A call is admitted only if every budget it is charged to (the org's for this period, its
role's for this period, the task's and each of its ancestors') can still take the most it could use — its input bound
plus its ``max_tokens``. That amount is held while the call runs and settled to the actual
usage when it ends, so concurrent calls can never overspend together: each reservation is
checked and taken in one step with no await in between. Periods are calendar months (UTC).
Plans give each org its default budget and its request and token rates. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from corral.domain.errors import BudgetExceeded, InvalidInput
from corral.domain.models import PICO_PER_DOLLAR, format_dollars, parse_dollars

__all__ = [
    "MAX_TOKENS",
    "UNLIMITED",
    "Budget",
    "Hold",
    "Ledger",
    "ModelLimits",
    "Scope",
    "budget_from_wire",
    "limits_for_plan",
    "period_of",
]

#: Budget scopes: ("org", "<org id>:<period>"), ("role", "<org id>:<role>:<period>") and
#: ("task", "<task id>").
Scope = tuple[str, str]


def budget_from_wire(value: object, *, what: str = "budget") -> Budget | None:
    """A budget as declared, ``{"tokens": 1000000, "cost": "25.50"}`` (either may be left out;
    ``None`` or both left out: no budget).

    Raises:
        InvalidInput: not such a mapping, or a bad amount, named.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"tokens", "cost"}:
        raise InvalidInput(
            f"{what} must be a mapping of tokens and/or cost (dollars)", details={"field": what}
        )
    tokens = value.get("tokens")
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= MAX_TOKENS
    ):
        raise InvalidInput(
            f"{what}.tokens must be a whole number from 0 to {MAX_TOKENS}, got {tokens!r}",
            details={"field": f"{what}.tokens"},
        )
    raw_cost = value.get("cost")
    if isinstance(raw_cost, bool) or not isinstance(raw_cost, str | int | float | None):
        raise InvalidInput(
            f'{what}.cost must be an amount of dollars like "25.50"',
            details={"field": f"{what}.cost"},
        )
    cost = None if raw_cost is None else parse_dollars(raw_cost, what=f"{what}.cost")
    if tokens is None and cost is None:
        return None
    return Budget(tokens, cost)


#: the largest token budget that may be declared
MAX_TOKENS = 10**15


def period_of(at: datetime) -> str:
    """The budget period ``at`` falls in: its calendar month, ``2026-12``."""
    return f"{at.year:04d}-{at.month:02d}"


@dataclass(frozen=True, slots=True)
class Budget:
    """A ceiling in tokens and/or picodollars; ``None`` leaves that dimension unlimited."""

    tokens: int | None = None
    cost: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "cost": None if self.cost is None else format_dollars(self.cost),
        }

    def left(self, tokens: int, cost: int) -> dict[str, Any]:
        """What is left of it after ``tokens`` and ``cost`` (``None``: unlimited)."""
        return {
            "tokens": None if self.tokens is None else max(0, self.tokens - tokens),
            "cost": None if self.cost is None else format_dollars(max(0, self.cost - cost)),
        }


#: a budget that limits nothing (a role without one is still kept, to show what it spent)
UNLIMITED = Budget()


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What a plan allows an org by default on the model gateway."""

    period: Budget
    requests_per_minute: int
    tokens_per_minute: int
    default_max_tokens: int = 4096  # reserved (and sent upstream) when a call names none

    def to_wire(self) -> dict[str, Any]:
        return {
            "periodBudget": self.period.to_wire(),
            "requestsPerMinute": self.requests_per_minute,
            "tokensPerMinute": self.tokens_per_minute,
            "defaultMaxTokens": self.default_max_tokens,
        }


_PLAN_LIMITS: dict[str, ModelLimits] = {
    "free": ModelLimits(Budget(1_000_000, 5 * PICO_PER_DOLLAR), 60, 100_000),
    "standard": ModelLimits(Budget(50_000_000, 500 * PICO_PER_DOLLAR), 3_000, 2_000_000),
    "enterprise": ModelLimits(Budget(None, 10_000 * PICO_PER_DOLLAR), 30_000, 20_000_000),
}


def limits_for_plan(plan: str) -> ModelLimits:
    """The plan's model limits; a plan an operator added gets ``standard``'s."""
    return _PLAN_LIMITS.get(plan, _PLAN_LIMITS["standard"])


@dataclass(slots=True)
class _Account:
    budget: Budget
    used_tokens: int = 0
    used_cost: int = 0
    held_tokens: int = 0
    held_cost: int = 0


@dataclass(slots=True)
class Hold:
    """What one admitted call holds on each of its scopes until it is settled."""

    scopes: tuple[Scope, ...]
    tokens: int
    cost: int
    settled: bool = field(default=False)


class Ledger:
    """Spent and held tokens and cost per scope; every method is synchronous, so a check and
    its reservation happen together in one event loop step."""

    def __init__(self) -> None:
        self._accounts: dict[Scope, _Account] = {}

    def knows(self, scope: Scope) -> bool:
        return scope in self._accounts

    def open(
        self, scope: Scope, budget: Budget, *, used_tokens: int = 0, used_cost: int = 0
    ) -> None:
        """Start keeping ``scope`` with what it has spent so far (from the store)."""
        if scope not in self._accounts:
            self._accounts[scope] = _Account(budget, used_tokens, used_cost)

    def set_budget(self, scope: Scope, budget: Budget) -> None:
        account = self._accounts.get(scope)
        if account is not None:
            account.budget = budget

    def exhausted(self, scope: Scope) -> str | None:
        """Why ``scope`` has nothing left (what it spent has reached its budget), or ``None``."""
        account = self._accounts.get(scope)
        if account is None:
            return None
        limit = account.budget
        if limit.tokens is not None and account.used_tokens >= limit.tokens:
            return (
                f"{_describe(scope)} model budget is spent: {account.used_tokens} of "
                f"{limit.tokens} tokens used"
            )
        if limit.cost is not None and account.used_cost >= limit.cost:
            return (
                f"{_describe(scope)} model budget is spent: ${format_dollars(account.used_cost)} "
                f"of ${format_dollars(limit.cost)} used"
            )
        return None

    def spent(self, scope: Scope) -> tuple[int, int]:
        """Tokens and picodollars settled on ``scope`` (holds not counted)."""
        account = self._accounts.get(scope)
        return (account.used_tokens, account.used_cost) if account else (0, 0)

    def reserve(self, scopes: tuple[Scope, ...], *, tokens: int, cost: int) -> Hold:
        """Hold ``tokens`` and ``cost`` on every scope, or on none.

        Raises:
            BudgetExceeded: a scope could go over its budget; names the scope and figures.
        """
        for scope in scopes:
            account = self._accounts[scope]
            limit = account.budget
            if limit.tokens is not None:
                committed = account.used_tokens + account.held_tokens
                if committed + tokens > limit.tokens:
                    raise BudgetExceeded(
                        f"{_describe(scope)} token budget would be exceeded: {committed} of "
                        f"{limit.tokens} used or held, this call may use up to {tokens}",
                        details={
                            "scope": scope[0],
                            "id": scope[1],
                            "limitTokens": limit.tokens,
                            "committedTokens": committed,
                            "callTokens": tokens,
                        },
                    )
            if limit.cost is not None:
                committed = account.used_cost + account.held_cost
                if committed + cost > limit.cost:
                    raise BudgetExceeded(
                        f"{_describe(scope)} cost budget would be exceeded: "
                        f"${format_dollars(committed)} of ${format_dollars(limit.cost)} used "
                        f"or held, this call may cost up to ${format_dollars(cost)}",
                        details={
                            "scope": scope[0],
                            "id": scope[1],
                            "limitCost": format_dollars(limit.cost),
                            "committedCost": format_dollars(committed),
                            "callCost": format_dollars(cost),
                        },
                    )
        for scope in scopes:
            account = self._accounts[scope]
            account.held_tokens += tokens
            account.held_cost += cost
        return Hold(scopes, tokens, cost)

    def settle(self, hold: Hold, *, tokens: int, cost: int) -> None:
        """Release the hold and charge what the call really used (once; later calls no-op)."""
        if hold.settled:
            return
        hold.settled = True
        for scope in hold.scopes:
            account = self._accounts.get(scope)
            if account is None:
                continue
            account.held_tokens -= hold.tokens
            account.held_cost -= hold.cost
            account.used_tokens += tokens
            account.used_cost += cost


def _describe(scope: Scope) -> str:
    kind, ident = scope
    if kind == "org":
        org, _, period = ident.partition(":")
        return f"organization {org}'s {period}"
    if kind == "role":
        _, role, period = ident.split(":", 2)
        return f"role {role}'s {period}"
    return f"task {ident}'s"
