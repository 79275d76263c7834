"""The task book: moves held to the task state machine, and the one owner of an agent's
current task."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from corral.control.dispatch.book import TaskBook
from corral.control.hub import EventHub
from corral.domain.errors import Conflict
from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import STANDARD
from corral.domain.tasks import Priority, TaskState
from corral.domain.tenancy import Organization
from corral.scheduling.scheduler import Scheduler
from corral.store.tasks import TaskRecord


class RecordingJournal:
    def __init__(self) -> None:
        self.moves: list[tuple[str, TaskState, TaskState]] = []
        self.busy: list[tuple[str, str | None]] = []

    def move(self, task_id: str, frm: TaskState, to: TaskState, **_: Any) -> None:
        self.moves.append((task_id, frm, to))

    def agent_busy(self, agent_id: str, task_id: str | None, **_: Any) -> None:
        self.busy.append((agent_id, task_id))

    def on_commit(self, callback: Any) -> None:
        return None


def _book(journal: RecordingJournal, freed: list[str]) -> TaskBook:
    return TaskBook(
        journal=journal,  # type: ignore[arg-type]
        hub=EventHub(),
        scheduler=Scheduler(),
        on_capacity=freed.append,
        on_child_ended=lambda child: None,
    )


def _task(task_id: str, state: TaskState, agent_id: str | None = None) -> TaskRecord:
    now = datetime.now(UTC)
    return TaskRecord(
        id=task_id, seq=1, org_id="org_acme", org="acme", plan="standard", role="worker",
        target_agent=None, agent_id=agent_id, parent_id=None, from_agent=None,
        priority=Priority.NORMAL, deadline=None, requirements={}, payload={}, result=None,
        state=state, attempts=1, progress=None, not_before=None, created_at=now, updated_at=now,
    )  # fmt: skip


def test_a_move_the_task_state_machine_has_no_edge_for_is_refused_and_not_journaled() -> None:
    journal = RecordingJournal()
    book = _book(journal, [])
    with pytest.raises(Conflict, match="completed task cannot become queued"):
        book.move(_task("task_a", TaskState.COMPLETED), TaskState.QUEUED)
    with pytest.raises(Conflict):
        book.move(_task("task_b", TaskState.QUEUED), TaskState.COMPLETED, via=TaskState.RUNNING)
    assert journal.moves == []


def test_a_finish_through_running_is_two_journaled_moves() -> None:
    journal = RecordingJournal()
    book = _book(journal, [])
    rec = _task("task_a", TaskState.DISPATCHED, "agent-a")
    book.move(rec, TaskState.COMPLETED, via=TaskState.RUNNING)
    assert journal.moves == [
        ("task_a", TaskState.DISPATCHED, TaskState.RUNNING),
        ("task_a", TaskState.RUNNING, TaskState.COMPLETED),
    ]
    assert "task_a" not in book.live


def test_an_agents_current_task_follows_its_slots_and_is_written_only_when_it_changes() -> None:
    journal = RecordingJournal()
    freed: list[str] = []
    book = _book(journal, freed)
    book.register(Organization(OrgId("org_acme"), OrgSlug("acme"), STANDARD, datetime.now(UTC)))
    book.take_slot("agent-a", "task_b")
    book.take_slot("agent-a", "task_a")
    assert book.current_task("agent-a") == "task_b"  # still one of its tasks: not rewritten
    book.free_slot(_task("task_b", TaskState.RUNNING, "agent-a"))
    assert book.current_task("agent-a") == "task_a"
    book.free_slot(_task("task_a", TaskState.RUNNING, "agent-a"))
    assert book.current_task("agent-a") is None
    assert journal.busy == [("agent-a", "task_b"), ("agent-a", "task_a"), ("agent-a", None)]
    assert freed == ["org_acme", "org_acme"] and book.holders() == []


def test_a_stale_current_task_found_at_start_is_cleared() -> None:
    journal = RecordingJournal()
    book = _book(journal, [])
    book.adopt_shown("agent-a", "task_gone")
    assert book.current_task("agent-a") is None
    assert journal.busy == [("agent-a", None)]
