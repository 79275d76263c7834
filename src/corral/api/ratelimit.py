"""Token buckets per organization, sized by the org's plan."""

from __future__ import annotations

import time
from collections.abc import Callable

from corral.domain.errors import RateLimited
from corral.domain.plans import Plan

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # org -> (tokens, last refill)

    def check(self, org: str, plan: Plan) -> None:
        """Take one token for ``org`` or raise.

        Raises:
            RateLimited: with the seconds until a token is available.
        """
        now = self._clock()
        tokens, last = self._buckets.get(org, (float(plan.api_burst), now))
        tokens = min(float(plan.api_burst), tokens + (now - last) * plan.api_rate_per_second)
        if tokens < 1.0:
            self._buckets[org] = (tokens, now)
            wait = (1.0 - tokens) / plan.api_rate_per_second
            raise RateLimited(
                f"organization {org!r} is over its {plan.name} plan's rate of "
                f"{plan.api_rate_per_second:g} requests/s (burst {plan.api_burst})",
                retry_after=wait,
            )
        self._buckets[org] = (tokens - 1.0, now)

    def forget(self, org: str) -> None:
        self._buckets.pop(org, None)
