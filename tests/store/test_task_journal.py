"""The task journal on both databases: group commit, folding, the guard, one bad row."""

import asyncio
from datetime import UTC, datetime
from typing import Any

from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import STANDARD
from corral.domain.tasks import TaskState
from corral.domain.tenancy import Organization
from corral.store.agents import AgentRepository
from corral.store.db import Database
from corral.store.task_journal import TaskJournal
from corral.store.tasks import TaskRepository
from corral.store.tenants import OrgRepository
from tests.support import eventually

Q, D, R, C = TaskState.QUEUED, TaskState.DISPATCHED, TaskState.RUNNING, TaskState.COMPLETED


async def _org(db: Database) -> Organization:
    org = Organization(OrgId("org_acme"), OrgSlug("acme"), STANDARD, datetime.now(UTC))
    await OrgRepository(db).create(org, key_id="kacme", key_secret="s")
    return org


def _row(task_id: str, org: Organization, **over: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "id": task_id,
        "seq": 1,
        "org_id": org.id,
        "role": "worker",
        "target_agent": None,
        "agent_id": None,
        "parent_id": None,
        "from_agent": None,
        "priority": "normal",
        "deadline": None,
        "requirements": {"gpu": 0},
        "payload": {"op": "echo"},
        "result": None,
        "state": "queued",
        "attempts": 0,
        "progress": None,
        "not_before": None,
        "created_at": now,
        "updated_at": now,
        "policy": None,
        "idempotency_key": None,
        "traceparent": None,
    }
    row.update(over)
    return row


async def test_many_tasks_share_one_transaction_and_each_keeps_its_history(db: Database) -> None:
    org = await _org(db)
    journal = TaskJournal(db)
    now = datetime.now(UTC)
    for i in range(200):
        journal.create(_row(f"task_{i:04x}", org), at=now)
    assert await journal.flush() == set()
    assert journal.commits == 1 and journal.rows == 200
    for i in range(200):
        journal.move(f"task_{i:04x}", Q, D, at=now, agent_id="agent-a", attempts=1)
        journal.move(f"task_{i:04x}", D, R, at=now)
        journal.move(f"task_{i:04x}", R, C, at=now, result={"n": i}, progress=1.0)
    await journal.flush()
    assert journal.commits == 2
    repo = TaskRepository(db)
    rec = await repo.get("task_0007")
    assert rec.state is C and rec.result == {"n": 7} and rec.agent_id == "agent-a"
    assert rec.attempts == 1 and rec.progress == 1.0
    steps = [(t.from_state, t.to_state) for t in await repo.history("task_0007")]
    assert steps == [
        (None, "queued"),
        ("queued", "dispatched"),
        ("dispatched", "running"),
        ("running", "completed"),
    ]
    await journal.close()


async def test_a_task_created_and_moved_in_one_batch_is_inserted_in_its_last_state(
    db: Database,
) -> None:
    org = await _org(db)
    journal = TaskJournal(db)
    now = datetime.now(UTC)
    journal.create(_row("task_a", org), at=now)
    journal.move("task_a", Q, D, at=now, agent_id="agent-a", attempts=1)
    await journal.flush()
    rec = await TaskRepository(db).get("task_a")
    assert rec.state is D and rec.agent_id == "agent-a"
    assert [t.to_state for t in await TaskRepository(db).history("task_a")] == [
        "queued",
        "dispatched",
    ]
    await journal.close()


async def test_an_update_whose_guard_does_not_hold_changes_nothing(db: Database) -> None:
    org = await _org(db)
    journal = TaskJournal(db)
    now = datetime.now(UTC)
    journal.create(_row("task_a", org), at=now)
    await journal.flush()
    journal.move("task_a", R, C, at=now)  # the task is queued, not running
    await journal.flush()
    assert (await TaskRepository(db).get("task_a")).state is Q
    await journal.close()


async def test_one_duplicate_id_fails_alone_and_the_rest_of_the_batch_lands(db: Database) -> None:
    org = await _org(db)
    journal = TaskJournal(db)
    now = datetime.now(UTC)
    journal.create(_row("task_dup", org), at=now)
    await journal.flush()
    for task_id in ("task_1", "task_dup", "task_2"):
        journal.create(_row(task_id, org, payload={"again": True}), at=now)
    assert await journal.flush() == {"task_dup"}
    repo = TaskRepository(db)
    assert {r.id for r in await repo.find(org_id=org.id)} == {"task_1", "task_2", "task_dup"}
    assert (await repo.get("task_dup")).payload == {"op": "echo"}  # the first one stands
    await journal.close()


async def test_news_goes_out_only_after_the_commit(db: Database) -> None:
    org = await _org(db)
    journal = TaskJournal(db)
    now = datetime.now(UTC)
    seen: list[str] = []

    def on_commit() -> None:
        # the callback runs once the row is committed: a second connection sees it
        seen.append("called")

    journal.create(_row("task_a", org), at=now)
    journal.on_commit(on_commit)
    assert seen == []  # appended, not yet committed
    await journal.flush()
    assert seen == ["called"]
    assert (await TaskRepository(db).get("task_a")).state is Q
    await journal.close()


async def test_concurrent_flushers_all_wait_for_their_own_writes(db: Database) -> None:
    org = await _org(db)
    journal = TaskJournal(db)
    repo = TaskRepository(db)

    async def submit(i: int) -> str:
        journal.create(_row(f"task_{i:04x}", org), at=datetime.now(UTC))
        await journal.flush()
        return (await repo.get(f"task_{i:04x}")).id  # NotFound if flush returned early

    ids = await asyncio.gather(*(submit(i) for i in range(300)))
    assert len(set(ids)) == 300
    assert journal.commits < 300  # group commit: callers shared transactions
    await journal.close()


async def test_an_agents_current_task_is_written_with_the_batch(db: Database) -> None:
    org = await _org(db)
    from corral.domain.admission import AdmittedResources
    from corral.domain.quantities import parse

    agents = AgentRepository(db)
    small = AdmittedResources(parse("100m"), parse("100m"), parse("64Mi"), parse("64Mi"))
    await agents.create(
        agent_id="agent-acme-a-1234",
        org_id=org.id,
        org=org.slug,
        name="a",
        role="worker",
        resources=small,
        command=["x"],
        slots=4,
    )
    journal = TaskJournal(db)
    journal.agent_busy("agent-acme-a-1234", "task_a", at=datetime.now(UTC))
    await journal.flush()
    agent = await agents.get("agent-acme-a-1234")
    assert agent.busy_task == "task_a" and agent.slots == 4
    journal.agent_busy("agent-acme-a-1234", None, at=datetime.now(UTC))
    await journal.close()
    assert (await agents.get("agent-acme-a-1234")).busy_task is None


async def test_a_batch_the_store_failed_is_retried_until_it_commits_and_nothing_overtakes_it(
    db: Database,
) -> None:
    from corral.domain.errors import Unavailable

    org = await _org(db)
    journal = TaskJournal(db)
    real = journal._writer.apply
    failures = [Unavailable("the store is away"), Unavailable("still away")]
    order: list[list[str]] = []

    async def flaky(writes: Any, busy: Any) -> None:
        if failures:
            raise failures.pop(0)
        order.append([task_id for task_id, _ in writes])
        await real(writes, busy)

    journal._writer.apply = flaky  # type: ignore[method-assign]
    now = datetime.now(UTC)
    journal.create(_row("task_a", org), at=now)
    first = asyncio.ensure_future(journal.flush())
    # the first batch is taken (and has failed) before the second comes
    await eventually(lambda: journal.failures >= 1, message="the first commit failed")
    journal.create(_row("task_b", org), at=now)
    assert await journal.flush() == set()
    assert await first == set()
    assert order == [["task_a"], ["task_b"]] and journal.failures == 2
    repo = TaskRepository(db)
    assert {r.id for r in await repo.find(org_id=org.id)} == {"task_a", "task_b"}
    await journal.close()


async def test_a_split_batch_retried_after_a_failure_writes_nothing_twice(db: Database) -> None:
    from corral.domain.errors import Unavailable

    org = await _org(db)
    journal = TaskJournal(db)
    now = datetime.now(UTC)
    journal.create(_row("task_dup", org), at=now)
    await journal.flush()
    real = journal._writer.apply
    calls: list[list[str]] = []
    failed_once = False

    async def flaky(writes: Any, busy: Any) -> None:
        nonlocal failed_once
        ids = [task_id for task_id, _ in writes]
        calls.append(ids)
        if ids == ["task_2"] and not failed_once:
            failed_once = True
            raise Unavailable("the store went away midway")
        await real(writes, busy)

    journal._writer.apply = flaky  # type: ignore[method-assign]
    for task_id in ("task_1", "task_dup", "task_2"):
        journal.create(_row(task_id, org), at=now)
    assert await journal.flush() == {"task_dup"}
    # whole batch refused (the duplicate), then one by one; task_1 is not written again
    assert calls.count(["task_1"]) == 1 and calls.count(["task_2"]) == 2
    history = await TaskRepository(db).history("task_1")
    assert [t.to_state for t in history] == ["queued"]
    await journal.close()
