"""The task counts /metrics shows are kept by the dispatcher: unfinished tasks from the start,
finished ones read from the store once, in the background, exactly once each however the read
and the tasks finishing at that moment interleave. On both databases."""

from __future__ import annotations

from corral.domain.tasks import TaskState
from corral.store.db import Database
from corral.store.tasks import TaskRecord
from tests.control.test_dispatcher_failures import World, _submit, _world


async def _agree(w: World) -> list[tuple[str, str, str, int]]:
    await w.journal.flush()
    kept = sorted(w.dispatcher.book.counts.items())
    assert kept == sorted(await w.tasks.count_by_org())
    return kept


def _cancel(w: World, rec: TaskRecord) -> None:
    w.dispatcher.book.move(rec, TaskState.CANCELLED)


async def test_finished_tasks_are_counted_once_whenever_they_finish_around_the_read(
    db: Database,
) -> None:
    w = await _world(db)
    early, around, late, waiting = [await _submit(w) for _ in range(4)]
    counts = w.dispatcher.book.counts
    assert not counts.loaded
    assert await _agree(w) == [(w.org.id, "normal", "queued", 4)]  # unfinished: counted already

    _cancel(w, early)  # finished before the read begins
    mark = counts.begin_load()
    _cancel(w, around)  # after the mark, and stored before the read looks
    await w.journal.flush()
    rows = await w.tasks.count_finished(before=mark)
    assert rows == [(w.org.id, "normal", "cancelled", 1)]  # only the early one: the mark holds
    counts.finish_load(rows, w.dispatcher.book.orgs)
    _cancel(w, late)  # after the read
    assert counts.loaded
    assert await _agree(w) == [
        (w.org.id, "normal", "cancelled", 3),
        (w.org.id, "normal", "queued", 1),
    ]
    assert waiting.state is TaskState.QUEUED
    await w.dispatcher.close()


async def test_the_dispatchers_own_read_agrees_with_the_store(db: Database) -> None:
    w = await _world(db)
    recs = [await _submit(w) for _ in range(5)]
    for rec in recs[:3]:
        _cancel(w, rec)
    await w.dispatcher.count_finished()
    assert await _agree(w) == [
        (w.org.id, "normal", "cancelled", 3),
        (w.org.id, "normal", "queued", 2),
    ]
    await w.dispatcher.close()
