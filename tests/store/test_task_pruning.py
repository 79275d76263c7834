"""Pruning on both databases says which pruned tasks kept objects in the org's object store."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from corral.domain import objects
from corral.domain.errors import NotFound
from corral.store.db import Database
from corral.store.schema import TaskRow
from corral.store.tasks import TaskRepository
from tests.store.test_task_journal import _org, _row


async def test_pruning_names_the_tasks_whose_payload_or_result_is_an_object(db: Database) -> None:
    org = await _org(db)
    old = datetime.now(UTC) - timedelta(days=30)
    ref = objects.ObjectRef("task_big_in/payload", 3_000_000, "SHA-256=x").to_wire()
    out = objects.ObjectRef("task_big_out/result.2", 2_000_000, "SHA-256=y").to_wire()
    rows = [
        _row("task_big_in", org, payload=ref, state="completed", attempts=1, updated_at=old),
        _row("task_big_out", org, result=out, state="failed", attempts=2, updated_at=old),
        _row("task_small", org, result={"ok": 1}, state="completed", updated_at=old),
        _row("task_live", org, payload=ref, state="queued", updated_at=old),
    ]
    async with db.sessions() as s, s.begin():
        await s.execute(insert(TaskRow), rows)
    kept: list[tuple[str, str, int]] = []
    repo = TaskRepository(db)
    pruned = await repo.prune(
        plan=org.plan.name, finished_before=datetime.now(UTC), with_objects=kept
    )
    assert pruned == 3
    assert sorted(kept) == [(org.id, "task_big_in", 1), (org.id, "task_big_out", 2)]
    assert await repo.prune(plan=org.plan.name, finished_before=datetime.now(UTC)) == 0


async def test_pruning_in_batches_names_each_deleted_tasks_objects_once(db: Database) -> None:
    """What a prune reports is what it deleted: across batches smaller than what is due, each
    task with an object is named once, by the batch that deleted it, and no task still kept."""
    org = await _org(db)
    old = datetime.now(UTC) - timedelta(days=30)
    rows = []
    for n in range(12):
        ref = objects.ObjectRef(f"task_o{n:02d}/payload", 3_000_000, "SHA-256=x").to_wire()
        rows.append(_row(f"task_o{n:02d}", org, payload=ref, state="completed", updated_at=old))
        rows.append(_row(f"task_p{n:02d}", org, result={"n": n}, state="failed", updated_at=old))
    async with db.sessions() as s, s.begin():
        await s.execute(insert(TaskRow), rows)
    repo = TaskRepository(db)
    named: list[str] = []
    while True:
        kept: list[tuple[str, str, int]] = []
        gone: list[tuple[str, str, str]] = []
        pruned = await repo.prune(
            plan=org.plan.name,
            finished_before=datetime.now(UTC),
            batch=5,
            with_objects=kept,
            gone=gone,
        )
        if not pruned:
            break
        assert len(gone) == pruned <= 5
        for _, task_id, _ in kept:
            with pytest.raises(NotFound):  # named, so deleted
                await repo.get(task_id)
        named += [t for _, t, _ in kept]
    assert sorted(named) == [f"task_o{n:02d}" for n in range(12)]
