"""The dispatcher when its store or its bus fails, and when agents change under a round.

The store is real (SQLite, and PostgreSQL where configured); the controller and the bus are
small stand-ins, so that each failure can be put exactly where it hurts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime
from typing import Any

from corral.bus.events import BusEvent, EventKind
from corral.control.bus_health import BusHealth
from corral.control.dispatch import Dispatcher
from corral.control.hub import EventHub
from corral.control.logs import JsonFormatter
from corral.domain.admission import AdmittedResources
from corral.domain.agents import Agent, AgentState
from corral.domain.errors import CorralError, PermissionDenied, Unavailable
from corral.domain.ids import AgentId, OrgId, OrgSlug
from corral.domain.messages import MessageType, TaskMessage
from corral.domain.plans import STANDARD
from corral.domain.quantities import parse
from corral.domain.tasks import Priority, Requirements, TaskState
from corral.domain.tenancy import Organization
from corral.store.db import Database
from corral.store.quota import QuotaLedger
from corral.store.task_journal import TaskJournal
from corral.store.tasks import TaskRecord, TaskRepository
from corral.store.tenants import OrgRepository
from tests.support import eventually


class StandInAgents:
    def __init__(self, agents: list[Agent]) -> None:
        self.agents = agents
        self.gate: asyncio.Event | None = None  # when set, find() waits for it after reading

    async def find(self, states: Collection[AgentState] | None = None) -> list[Agent]:
        found = [a for a in self.agents if states is None or a.state in states]
        if self.gate is not None:
            await self.gate.wait()
        return found

    async def get(self, agent_id: str, org_id: str | None = None) -> Agent:
        return next(a for a in self.agents if a.id == agent_id)

    async def update(self, *args: Any, **kwargs: Any) -> None:
        return None


class StandInController:
    def __init__(self, agents: list[Agent]) -> None:
        self.agents = StandInAgents(agents)
        self.bus_health = BusHealth()  # no probe: the bus answers
        # the stand-in agents never heartbeat: no test here judges them by their silence
        # (a long one would reach a restart this stand-in cannot do)
        self.silence_limit = float("inf")

    def work_done(self, agent_id: str) -> None:
        return None


class StandInBus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, TaskMessage]] = []
        self.events: asyncio.Queue[list[BusEvent]] = asyncio.Queue()
        self.broken: CorralError | None = None

    async def deliver_many(
        self, items: list[tuple[str, str, TaskMessage]], *, batching: Collection[str] = ()
    ) -> list[int | CorralError]:
        if self.broken is not None:
            raise self.broken
        self.sent.extend(items)
        return list(range(1, len(items) + 1))

    async def deliver(self, org: str, agent: str, task: TaskMessage) -> int:
        self.sent.append((org, agent, task))
        return 1

    async def acknowledge(self, events: list[BusEvent]) -> None:
        for event in events:
            await event.ack()

    async def event_batches(self, **_: Any) -> AsyncIterator[list[BusEvent]]:
        while True:
            yield await self.events.get()


@dataclasses.dataclass
class World:
    org: Organization
    agent: Agent
    bus: StandInBus
    journal: TaskJournal
    dispatcher: Dispatcher
    tasks: TaskRepository


async def _world(db: Database) -> World:
    org = Organization(OrgId("org_acme"), OrgSlug("acme"), STANDARD, datetime.now(UTC))
    await OrgRepository(db).create(org, key_id="kacme", key_secret="s")
    now = datetime.now(UTC)
    res = AdmittedResources(parse("1"), parse("1"), parse("1Gi"), parse("1Gi"))
    agent = Agent(
        AgentId("agent-a"), org.id, org.slug, "a", "worker", AgentState.RUNNING, res, (), None, 0,
        None, now, now,
    )  # fmt: skip
    bus, journal = StandInBus(), TaskJournal(db)
    dispatcher = Dispatcher(
        tasks=TaskRepository(db),
        journal=journal,
        orgs=OrgRepository(db),
        ledger=QuotaLedger(db),  # never charged: nothing provisions here
        controller=StandInController([agent]),  # type: ignore[arg-type]
        bus=bus,  # type: ignore[arg-type]
        hub=EventHub(),
        auto_provision=False,
    )
    await dispatcher.rebuild()
    return World(org, agent, bus, journal, dispatcher, TaskRepository(db))


async def _submit(w: World) -> TaskRecord:
    return await w.dispatcher.submit(
        w.org,
        role="worker",
        agent=None,
        priority=Priority.NORMAL,
        deadline=None,
        requirements=Requirements(),
        payload={"x": 1},
    )


def _fail_next_commits(journal: TaskJournal, n: int) -> None:
    real = journal._writer.apply
    left = [n]

    async def apply(writes: Any, busy: Any) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise Unavailable("the store is away")
        await real(writes, busy)

    journal._writer.apply = apply  # type: ignore[method-assign]


async def test_a_dispatch_whose_commit_failed_is_committed_later_and_then_sent(
    db: Database,
) -> None:
    w = await _world(db)
    rec = await _submit(w)
    _fail_next_commits(w.journal, 2)
    await w.dispatcher.round()  # waits out the failed commits, then sends
    assert [t.task_id for _, _, t in w.bus.sent] == [rec.id]
    stored = await w.tasks.get(rec.id)
    assert stored.state is TaskState.DISPATCHED and stored.agent_id == "agent-a"
    assert w.journal.failures == 2
    await w.dispatcher.close()


async def test_events_are_acknowledged_only_once_their_effects_are_committed(
    db: Database,
) -> None:
    w = await _world(db)
    rec = await _submit(w)
    await w.dispatcher.round()
    acks: list[str] = []

    async def ack() -> None:
        acks.append(rec.id)

    done = TaskMessage(rec.id, "agent-a", "platform", MessageType.COMPLETE, {"ok": 1}, 1)
    consumer = asyncio.create_task(w.dispatcher.consume())
    _fail_next_commits(w.journal, 2)
    await w.bus.events.put([BusEvent(w.org.slug, "agent-a", EventKind.EVENTS, done, ack)])

    async def completed_then_acked() -> bool:
        return bool(acks) and (await w.tasks.get(rec.id)).state is TaskState.COMPLETED

    await eventually(completed_then_acked, message="the completion stored, then acknowledged")
    assert acks == [rec.id]
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    await w.dispatcher.close()


async def test_a_bus_that_fails_a_whole_round_gets_the_tasks_retried(db: Database) -> None:
    w = await _world(db)
    rec = await _submit(w)
    w.bus.broken = PermissionDenied("an earlier violation on the platform connection")
    await w.dispatcher.round()
    stored = await w.tasks.get(rec.id)
    assert stored.state is TaskState.QUEUED and stored.attempts == 1  # back in the queue
    assert "agent-a" not in w.dispatcher.book.inflight  # its slot is free
    w.bus.broken = None

    async def sent() -> bool:
        await w.dispatcher.round()
        return any(t.task_id == rec.id for _, _, t in w.bus.sent)

    await eventually(sent, message="the task sent once its backoff passed")
    await w.dispatcher.close()


async def test_an_agent_that_failed_while_a_round_read_the_agents_is_given_nothing(
    db: Database,
) -> None:
    w = await _world(db)
    agents = w.dispatcher.controller.agents
    assert isinstance(agents, StandInAgents)
    rec = await _submit(w)
    agents.gate = asyncio.Event()
    round_ = asyncio.create_task(w.dispatcher.round())

    async def reading() -> bool:
        return agents.gate is not None and not round_.done()

    await eventually(reading, message="the round is reading the agents")
    failed = dataclasses.replace(w.agent, state=AgentState.FAILED)
    agents.agents = [failed]
    w.dispatcher.agent_changed(failed)  # what the controller says as it records the failure
    agents.gate.set()
    await round_
    assert w.dispatcher.book.live[rec.id].state is TaskState.QUEUED  # not given to a dead agent
    assert w.bus.sent == []
    await w.dispatcher.close()


async def test_a_late_result_of_an_earlier_attempt_is_ignored(db: Database) -> None:
    w = await _world(db)
    rec = await _submit(w)
    await w.dispatcher.round()
    await w.dispatcher._retry(rec.id, "the agent was lost")
    w.dispatcher.book.live[rec.id] = dataclasses.replace(
        w.dispatcher.book.live[rec.id], not_before=None
    )

    async def dispatched_again() -> bool:
        w.dispatcher.book.delayed = [(0.0, q) for _, q in w.dispatcher.book.delayed]  # backoff over
        await w.dispatcher.round()
        return w.dispatcher.book.live[rec.id].attempts == 2

    await eventually(dispatched_again, message="the task dispatched a second time")
    old = TaskMessage(rec.id, "agent-a", "platform", MessageType.COMPLETE, {"from": 1}, 1)
    await w.dispatcher.handle(BusEvent(w.org.slug, "agent-a", EventKind.EVENTS, old, _noop))
    assert w.dispatcher.book.live[rec.id].state is TaskState.DISPATCHED  # attempt 1's: ignored
    new = TaskMessage(rec.id, "agent-a", "platform", MessageType.COMPLETE, {"from": 2}, 2)
    await w.dispatcher.handle(BusEvent(w.org.slug, "agent-a", EventKind.EVENTS, new, _noop))
    await w.journal.flush()
    stored = await w.tasks.get(rec.id)
    assert stored.state is TaskState.COMPLETED and stored.result == {"from": 2}
    await w.dispatcher.close()


async def _noop() -> None:
    return None


async def test_a_delivery_the_hung_bus_dropped_is_requeued_without_counting_the_attempt(
    db: Database,
) -> None:
    w = await _world(db)
    rec = await _submit(w)

    async def no_answer() -> None:
        raise Unavailable("the bus did not answer")

    health = BusHealth(no_answer)
    w.dispatcher.controller.bus_health = health
    w.bus.broken = Unavailable("delivering tasks: no acknowledgement in time")
    await w.dispatcher.round()
    stored = await w.tasks.get(rec.id)
    assert stored.state is TaskState.QUEUED and stored.attempts == 0  # not an attempt
    assert health.disturbed()
    assert "agent-a" not in w.dispatcher.book.inflight
    w.bus.broken = None
    await w.dispatcher.round()
    assert not w.bus.sent  # nothing is sent while the bus does not answer
    await health.check()  # still no answer

    health._probe = None  # the bus answers again
    assert await health.check()

    async def sent() -> bool:
        await w.dispatcher.round()
        return any(t.task_id == rec.id for _, _, t in w.bus.sent)

    await eventually(sent, message="the task sent once the bus answers")
    assert [t.attempt for _, _, t in w.bus.sent] == [1]
    await w.dispatcher.close()


async def test_a_delivery_that_timed_out_while_the_bus_answers_counts_as_an_attempt(
    db: Database,
) -> None:
    w = await _world(db)
    rec = await _submit(w)
    w.bus.broken = Unavailable("delivering tasks: no acknowledgement in time")
    await w.dispatcher.round()  # the stand-in controller's bus health has no probe: it answers
    stored = await w.tasks.get(rec.id)
    assert stored.state is TaskState.QUEUED and stored.attempts == 1
    await w.dispatcher.close()


class JsonLines(logging.Handler):
    """Formats each record as it is emitted, as the control plane's log handler does (the ids
    of the span current then)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_a_failed_delivery_is_logged_with_the_trace_of_its_dispatch(db: Database) -> None:
    w = await _world(db)
    trace_id, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    rec = await w.dispatcher.submit(
        w.org,
        role="worker",
        agent=None,
        priority=Priority.NORMAL,
        deadline=None,
        requirements=Requirements(),
        payload={"x": 1},
        traceparent=f"00-{trace_id}-{parent_span}-01",
    )
    w.bus.broken = PermissionDenied("an earlier violation on the platform connection")
    handler = JsonLines()
    logging.getLogger("corral.dispatcher").addHandler(handler)
    try:
        await w.dispatcher.round()
    finally:
        logging.getLogger("corral.dispatcher").removeHandler(handler)
    lines = {d["task"]: d for d in handler.lines if d["msg"].startswith("delivery of")}
    assert lines[rec.id]["trace_id"] == trace_id  # the dispatch span's, a child of the submit
    assert len(lines[rec.id]["span_id"]) == 16 and lines[rec.id]["org"] == "acme"
    await w.dispatcher.close()
