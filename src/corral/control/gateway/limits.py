"""Requests-per-minute and tokens-per-minute per organization, from its plan.

Two token buckets per org, refilled continuously: a request takes one from the request bucket
when admitted; tokens are taken from the token bucket when the call settles (the bucket may go
below zero, and then refuses calls until it refills). Kept in memory: the gateway runs in the
one control plane process that holds the store's writer lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from corral.domain.budgets import ModelLimits
from corral.domain.errors import RateLimited

__all__ = ["Rates"]


@dataclass(slots=True)
class _Bucket:
    capacity: float
    per_second: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.per_second)
        self.at = now


class Rates:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    def _bucket(self, table: dict[str, _Bucket], org: str, per_minute: int) -> _Bucket:
        bucket = table.get(org)
        if bucket is None or bucket.capacity != per_minute:
            now = self._clock()
            bucket = _Bucket(float(per_minute), per_minute / 60.0, float(per_minute), now)
            table[org] = bucket
        return bucket

    def admit(self, org: str, limits: ModelLimits) -> None:
        """Take one request for ``org``.

        Raises:
            RateLimited: over its requests or tokens per minute; ``retry_after`` says when.
        """
        now = self._clock()
        requests = self._bucket(self._requests, org, limits.requests_per_minute)
        tokens = self._bucket(self._tokens, org, limits.tokens_per_minute)
        requests.refill(now)
        tokens.refill(now)
        if tokens.level <= 0:
            raise RateLimited(
                f"organization {org} is over its {limits.tokens_per_minute} tokens per minute",
                retry_after=(1 - tokens.level) / tokens.per_second,
                details={"limit": "tokens_per_minute", "value": limits.tokens_per_minute},
            )
        if requests.level < 1:
            raise RateLimited(
                f"organization {org} is over its {limits.requests_per_minute} requests per minute",
                retry_after=(1 - requests.level) / requests.per_second,
                details={"limit": "requests_per_minute", "value": limits.requests_per_minute},
            )
        requests.level -= 1

    def spent(self, org: str, tokens: int) -> None:
        bucket = self._tokens.get(org)
        if bucket is not None:
            bucket.level -= tokens
