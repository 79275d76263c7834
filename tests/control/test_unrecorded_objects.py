"""A result kept in the org's object store that its task will never have — an earlier
attempt's, or a stopped task's — is handed over for deletion; a recorded one never is."""

from __future__ import annotations

import dataclasses

from corral.bus.events import BusEvent, EventKind
from corral.domain import objects
from corral.domain.messages import MessageType, TaskMessage
from corral.domain.tasks import TaskState
from corral.store.db import Database
from tests.control.test_dispatcher_failures import _noop, _submit, _world
from tests.support import eventually


def _ref(task_id: str, attempt: int) -> dict[str, object]:
    name = objects.result_name(task_id, attempt)
    return objects.ObjectRef(name, 2_000_000, "SHA-256=x").to_wire()


async def test_an_earlier_attempts_object_is_forgotten_and_the_recorded_one_kept(
    db: Database,
) -> None:
    w = await _world(db)
    forgotten: list[tuple[str, str, int]] = []
    w.dispatcher.events.on_unrecorded_object = lambda *seen: forgotten.append(seen)
    rec = await _submit(w)
    await w.dispatcher.round()
    await w.dispatcher._retry(rec.id, "the agent was lost")
    w.dispatcher.book.live[rec.id] = dataclasses.replace(
        w.dispatcher.book.live[rec.id], not_before=None
    )

    async def dispatched_again() -> bool:
        w.dispatcher.book.delayed = [(0.0, q) for _, q in w.dispatcher.book.delayed]
        await w.dispatcher.round()
        return w.dispatcher.book.live[rec.id].attempts == 2

    await eventually(dispatched_again, message="the task dispatched a second time")
    for attempt in (1, 2):
        done = TaskMessage(
            rec.id, "agent-a", "platform", MessageType.COMPLETE, _ref(rec.id, attempt), attempt
        )
        await w.dispatcher.handle(BusEvent(w.org.slug, "agent-a", EventKind.EVENTS, done, _noop))
    await w.journal.flush()
    assert forgotten == [("acme", rec.id, 1)]
    stored = await w.tasks.get(rec.id)
    assert stored.state is TaskState.COMPLETED and stored.result == _ref(rec.id, 2)
    await w.dispatcher.close()


async def test_a_stopped_tasks_object_is_forgotten_when_its_handler_ends(db: Database) -> None:
    w = await _world(db)
    forgotten: list[tuple[str, str, int]] = []
    w.dispatcher.events.on_unrecorded_object = lambda *seen: forgotten.append(seen)
    rec = await _submit(w)
    await w.dispatcher.round()
    await w.dispatcher.cancel(w.org, rec.id)
    late = TaskMessage(rec.id, "agent-a", "platform", MessageType.COMPLETE, _ref(rec.id, 1), 1)
    await w.dispatcher.handle(BusEvent(w.org.slug, "agent-a", EventKind.EVENTS, late, _noop))
    assert forgotten == [("acme", rec.id, 1)]
    again = TaskMessage(rec.id, "agent-a", "platform", MessageType.COMPLETE, _ref(rec.id, 1), 1)
    await w.dispatcher.handle(BusEvent(w.org.slug, "agent-a", EventKind.EVENTS, again, _noop))
    assert forgotten == [("acme", rec.id, 1)]  # a duplicate of an ended handler: nothing more
    await w.journal.flush()
    assert (await w.tasks.get(rec.id)).state is TaskState.CANCELLED
    await w.dispatcher.close()
