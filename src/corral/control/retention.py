"""Finished tasks are kept for their plan's retention period, then pruned.

Why: the task table and its history grow with every task ever run; left alone, a platform that
runs thousands of tasks a second fills its database and slows every query that touches it.
As Temporal keeps a namespace's closed workflows for a retention period, a plan says how long
an org's finished tasks stay (``task_retention_seconds``); a task still live is never pruned.
``GET`` of a pruned task says it may have been pruned (the task id carries its creation time;
see :func:`corral.domain.ids.task_created_at`). The objects a pruned task kept in its org's
object store (a big payload or result) are deleted with it (``forget``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from corral.domain.errors import CorralError
from corral.domain.plans import PLANS, Plan
from corral.store.tasks import TaskRepository

__all__ = ["Retention", "retention_of"]

log = logging.getLogger("corral.retention")


def retention_of(plan: Plan, override: float | None = None) -> float:
    """Seconds a finished task of ``plan`` is kept (``override``: the operator's, for all)."""
    return plan.task_retention_seconds if override is None else override


class Retention:
    """Prunes finished tasks past their plan's retention, in bounded batches."""

    def __init__(
        self,
        tasks: TaskRepository,
        *,
        interval: float = 60.0,
        override: float | None = None,
        batch: int = 5000,
        forget: Callable[[str, list[tuple[str, int]]], Awaitable[None]] | None = None,
    ) -> None:
        self._tasks = tasks
        #: deletes the objects of pruned tasks: (org id, [(task id, attempts)])
        self._forget = forget
        self.interval = interval
        self.override = override
        self._batch = batch
        self.pruned = 0  # tasks pruned since start, for /metrics
        #: told (org id, priority, state) of every task pruned (the dispatcher's counts)
        self.on_pruned: Callable[[list[tuple[str, str, str]]], None] = lambda gone: None

    async def prune_once(self, *, now: datetime | None = None) -> int:
        """One pass over every plan; returns the tasks pruned."""
        now = now or datetime.now(UTC)
        total = 0
        for plan in list(PLANS.values()):
            horizon = now - timedelta(seconds=retention_of(plan, self.override))
            while True:
                kept: list[tuple[str, str, int]] | None = [] if self._forget else None
                gone: list[tuple[str, str, str]] = []
                n = await self._tasks.prune(
                    plan=plan.name,
                    finished_before=horizon,
                    batch=self._batch,
                    with_objects=kept,
                    gone=gone,
                )
                self.on_pruned(gone)
                total += n
                await self._forget_objects(kept or [])
                if n < self._batch:
                    break
                await asyncio.sleep(0)  # let the dispatcher in between batches
        self.pruned += total
        if total:
            log.info("pruned %d finished tasks past their retention", total)
        return total

    async def _forget_objects(self, pruned: list[tuple[str, str, int]]) -> None:
        by_org: dict[str, list[tuple[str, int]]] = {}
        for org_id, task_id, attempts in pruned:
            by_org.setdefault(org_id, []).append((task_id, attempts))
        for org_id, tasks in by_org.items():
            assert self._forget is not None
            try:
                await self._forget(org_id, tasks)
            except CorralError as exc:  # e.g. the org was deleted meanwhile, with its store
                log.warning("objects of %d pruned tasks not deleted: %s", len(tasks), exc.message)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.prune_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pruning finished tasks failed; retrying next round")
