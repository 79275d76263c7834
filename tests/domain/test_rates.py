"""Token buckets: one request takes one token, a batch of tasks takes more, and what is not
there is not taken."""

from __future__ import annotations

import pytest

from corral.api.ratelimit import RateLimiter
from corral.domain import plans
from corral.domain.errors import RateLimited
from corral.domain.rates import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_take_of_several_tokens_takes_them_all_or_none() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    assert buckets.take("a", rate=5, burst=20, cost=15) == 0.0
    assert buckets.take("a", rate=5, burst=20, cost=10) == pytest.approx(1.0)  # 5 there
    assert buckets.take("a", rate=5, burst=20, cost=5) == 0.0  # the refused take took none
    clock.now += 2
    assert buckets.take("a", rate=5, burst=20, cost=10) == 0.0
    assert buckets.take("b", rate=5, burst=20, cost=500) == 0.0  # at most a whole burst


def test_a_batch_counts_against_the_plans_rate_by_its_size() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    free = plans.get_plan("free")  # 5/s, burst 20
    for _ in range(2):
        limiter.check("acme", free, cost=10)
    with pytest.raises(RateLimited, match="over its free plan's rate"):
        limiter.check("acme", free)
    limiter.check("globex", free, cost=10)  # another org's bucket is its own
