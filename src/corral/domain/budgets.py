"""Model budgets: what an org, a task and its delegated children may spend, and the ledger
that guarantees they never do more.

A call is admitted only if every budget it is charged to (the org's for this period, the
task's and each of its ancestors') can still take the most it could use — its input bound
plus its ``max_tokens``. That amount is held while the call runs and settled to the actual
usage when it ends, so concurrent calls can never overspend together: each reservation is
checked and taken in one step with no await in between. Periods are calendar months (UTC).
Plans give each org its default budget and its request and token rates. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from corral.domain.errors import BudgetExceeded
from corral.domain.models import PICO_PER_DOLLAR, format_dollars

__all__ = [
    "Budget",
    "Hold",
    "Ledger",
    "ModelLimits",
    "Scope",
    "limits_for_plan",
    "period_of",
]

#: Budget scopes: ("org", "<org id>:<period>") and ("task", "<task id>").
Scope = tuple[str, str]


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
    return f"task {ident}'s"
