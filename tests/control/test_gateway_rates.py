"""Requests and tokens per minute per org: a bucket refills continuously and refuses with
the time to wait."""

from __future__ import annotations

import pytest

from corral.control.gateway.limits import Rates
from corral.domain.budgets import Budget, ModelLimits
from corral.domain.errors import RateLimited

LIMITS = ModelLimits(Budget(), requests_per_minute=3, tokens_per_minute=600)


def test_requests_per_minute_refuse_the_next_until_the_bucket_refills() -> None:
    now = [100.0]
    rates = Rates(clock=lambda: now[0])
    for _ in range(3):
        rates.admit("acme", LIMITS)
    with pytest.raises(RateLimited) as refused:
        rates.admit("acme", LIMITS)
    assert refused.value.details["limit"] == "requests_per_minute"
    assert refused.value.retry_after == pytest.approx(20.0)
    rates.admit("other", LIMITS)  # another org has its own bucket
    now[0] += 20.0
    rates.admit("acme", LIMITS)


def test_tokens_spent_beyond_the_minute_refuse_calls_until_repaid() -> None:
    now = [0.0]
    rates = Rates(clock=lambda: now[0])
    rates.admit("acme", LIMITS)
    rates.spent("acme", 900)  # one call went past the bucket: it goes negative
    with pytest.raises(RateLimited) as refused:
        rates.admit("acme", LIMITS)
    assert refused.value.details["limit"] == "tokens_per_minute"
    now[0] += refused.value.retry_after
    rates.admit("acme", LIMITS)
