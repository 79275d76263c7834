"""Named, guarded background tasks: failures are logged, cancellation propagates, and
stopping them is bounded even if one swallows its cancel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Background"]

log = logging.getLogger("corral.background")

T = TypeVar("T")


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``coro`` in the background; an exception is logged, never lost. The coroutine
        is the task itself (no wrapper), so one cancelled before it ever ran is closed
        properly rather than left never awaited."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task %s failed", task.get_name(), exc_info=exc)

    async def close(self, *, grace: float = 5.0) -> None:
        """Cancel every task and wait for them; a task that swallowed its cancel is asked
        again, soon and then backing off (``asyncio.wait_for`` on Python 3.11 loses a cancel
        that meets its inner result, and the bus client waits that way), never awaited for
        more than about three ``grace``s."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        began = loop.time()
        step, warned = 0.05, False
        while tasks:
            left = began + 3 * grace - loop.time()
            if left <= 0:
                for task in tasks:
                    log.warning("background task %s did not stop; left behind", task.get_name())
                return
            _, tasks = await asyncio.wait(tasks, timeout=min(step, left))
            if tasks and not warned and loop.time() - began >= grace:
                warned = True
                for task in tasks:
                    log.warning(
                        "background task %s did not stop; cancelling it again", task.get_name()
                    )
            for task in tasks:
                task.cancel()
            step = min(2 * step, grace)
