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

    def take(self, key: str, *, rate: float, burst: float) -> float:
        """Take one token of ``key``'s bucket; returns 0.0 if one was there, else the seconds
        until one will be (and nothing is taken)."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        if tokens < 1.0:
            return (1.0 - tokens) / rate if rate > 0 else float("inf")
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)
