"""Token buckets per organization, sized by the org's plan."""

from __future__ import annotations

import time
from collections.abc import Callable

from corral.domain.errors import RateLimited
from corral.domain.plans import Plan
from corral.domain.rates import TokenBuckets

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets = TokenBuckets(clock=clock)

    def check(self, org: str, plan: Plan, *, cost: float = 1.0) -> None:
        """Take ``cost`` tokens (one per request; a batch of tasks takes more) for ``org`` or
        raise.

        Raises:
            RateLimited: with the seconds until the tokens are available.
        """
        wait = self._buckets.take(
            org, rate=plan.api_rate_per_second, burst=plan.api_burst, cost=cost
        )
        if wait > 0:
            raise RateLimited(
                f"organization {org!r} is over its {plan.name} plan's rate of "
                f"{plan.api_rate_per_second:g} requests/s (burst {plan.api_burst})",
                retry_after=wait,
            )

    def forget(self, org: str) -> None:
        self._buckets.forget(org)
