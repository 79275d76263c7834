"""Helpers shared by the tests: polling with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Call ``probe`` until it returns a truthy value or raises nothing falsy; fail at the deadline.

    Returns the first truthy value. An AssertionError raised by ``probe`` counts as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = probe()
            if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
                value = await value  # type: ignore[misc]
            if value:
                return value  # type: ignore[return-value]
            last = None
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s") from last
        await asyncio.sleep(interval)


def wait_until(probe: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02) -> T:
    """Synchronous twin of :func:`eventually` for code outside an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        threading.Event().wait(interval)
