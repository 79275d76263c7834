"""Token buckets: how fast something may happen, per key, with bursts.

Pure: the clock is passed in. Used wherever one tenant's rate must not become another's
wait — API requests per org, delegations per org."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["TokenBuckets"]


class TokenBuckets:
    """One bucket per key, refilled at ``rate`` tokens/s up to ``burst``; at most
    ``max_keys`` buckets are kept (the least recently used key is forgotten first, which
    only ever gives it a full bucket again)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self._clock = clock
        self._max = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, *, rate: float, burst: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens (at most ``burst``) of ``key``'s bucket; returns 0.0 if they
        were there, else the seconds until they will be (and nothing is taken)."""
        cost = min(cost, burst)
        now = self._clock()
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        if tokens < cost:
            return (cost - tokens) / rate if rate > 0 else float("inf")
        self._buckets[key] = (tokens - cost, now)
        return 0.0

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)
