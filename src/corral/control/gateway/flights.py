"""One lookup for many callers: when a cached answer lapses under load, every call in flight
misses it at once, and without this each would read the store (and, for a provider key, write
an audit record) — a stampede the benchmark found at 200 concurrent streams. Callers of the
same key share the one lookup running; its answer or error is theirs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from functools import partial
from typing import Any, Generic, TypeVar

__all__ = ["Flights"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Flights(Generic[K, V]):
    def __init__(self, name: str) -> None:
        self._name = name
        self._running: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, lookup: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """The answer of ``lookup()``, shared with every caller of ``key`` meanwhile. A caller
        that is cancelled leaves the lookup running for the others."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(lookup(), name=f"{self._name}-lookup")
            self._running[key] = task
            task.add_done_callback(partial(self._landed, key))
        return await asyncio.shield(task)

    def _landed(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # read here: every caller may have gone
