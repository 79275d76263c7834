"""The control plane's bus API against a real server: tasks, events, control, tenants."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from corral.bus import (
    BusAuthority,
    BusEvent,
    EmbeddedNats,
    EventKind,
    PlatformBus,
    streams,
)
from corral.domain import messages, subjects
from corral.domain.errors import Conflict, CorralError, NotFound, QuotaExceeded, Unavailable
from corral.domain.messages import (
    ControlKind,
    ControlMessage,
    MessageType,
    StatusKind,
    StatusMessage,
    TaskMessage,
)
from tests.bus.conftest import CAPS, LIMITS, Connect, MiB, Peer, make_task
from tests.support import eventually


def _status(agent: str, n: int) -> bytes:
    return messages.encode(StatusMessage(agent, StatusKind.WORKING, detail={"n": n}).to_wire())


async def _take(bus: PlatformBus, count: int, *, wait: float = 0.2) -> list[BusEvent]:
    events: list[BusEvent] = []
    async for event in bus.events(wait=wait):
        events.append(event)
        await event.ack()
        if len(events) == count:
            break
    return events


@pytest.mark.usefixtures("orgs")
async def test_a_delivered_task_is_pulled_and_acked_by_its_agent(
    bus: PlatformBus, connect: Connect
) -> None:
    task = make_task("t-1", "a1", prompt="hello")
    seq = await bus.deliver("a", "a1", task)
    assert await bus.deliver("a", "a1", task) == seq  # a redelivery is stored once

    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    pull = await a1.nc.jetstream().pull_subscribe_bind(durable="a1", stream=subjects.INBOX_STREAM)
    [msg] = await pull.fetch(5, timeout=2)
    assert TaskMessage.from_wire(json.loads(msg.data)) == task
    await msg.ack_sync()

    info = await pull.consumer_info()
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    admin = await connect(bus.authority.mint_org_admin_creds("a"), name="a-admin")
    inbox = await admin.nc.jetstream().stream_info(subjects.INBOX_STREAM)
    assert inbox.state.messages == 0  # a work queue forgets what was acked


@pytest.mark.usefixtures("orgs")
async def test_the_same_attempt_sent_to_another_agent_is_a_new_message(bus: PlatformBus) -> None:
    # work requeued without an attempt (the bus did not answer) may go to another agent
    # within the duplicate window: the inbox must store it for that agent, not drop it as a
    # duplicate of the first delivery
    task = make_task("t-moved", "a1", prompt="hello")
    first = await bus.deliver("a", "a1", task)
    moved = await bus.deliver("a", "a2", dataclasses.replace(task, to_agent="a2"))
    assert moved != first
    assert await bus.deliver("a", "a2", dataclasses.replace(task, to_agent="a2")) == moved


@pytest.mark.usefixtures("orgs")
async def test_delivering_to_an_unknown_org_or_a_full_inbox_fails_clearly(
    bus: PlatformBus,
) -> None:
    with pytest.raises(NotFound):
        await bus.deliver("nobody", "x", make_task("t", "x"))
    tiny = dataclasses.replace(LIMITS, inbox_max_bytes=4096)
    await bus.ensure_org("a", tiny)  # a plan change shrinks the inbox
    with pytest.raises(QuotaExceeded):
        for i in range(20):
            await bus.deliver("a", "a1", make_task(f"t{i}", "a1", blob="x" * 512))


@pytest.mark.usefixtures("orgs")
async def test_many_tasks_are_delivered_at_once_each_with_its_own_outcome(
    bus: PlatformBus, connect: Connect
) -> None:
    tasks = [make_task(f"t-{i}", "a1", n=i) for i in range(50)]
    items = [("a", "a1", t) for t in tasks]
    items.insert(10, ("nobody", "x", make_task("lost", "x")))  # an org without an account
    results = await bus.deliver_many(items)
    assert isinstance(results[10], NotFound) and "nobody" in results[10].message
    seqs = [r for i, r in enumerate(results) if i != 10]
    assert all(isinstance(r, int) for r in seqs) and len(set(seqs)) == 50
    again = await bus.deliver_many([("a", "a1", tasks[0])])
    assert again == [seqs[0]]  # the same task and attempt is stored once

    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    pull = await a1.nc.jetstream().pull_subscribe_bind(durable="a1", stream=subjects.INBOX_STREAM)
    got: list[TaskMessage] = []
    while len(got) < 50:
        for msg in await pull.fetch(50, timeout=2):
            got.append(TaskMessage.from_wire(json.loads(msg.data)))
            await msg.ack()
    assert got == tasks  # in order, nothing lost, nothing twice


@pytest.mark.usefixtures("orgs")
async def test_an_agent_that_reads_batches_gets_its_tasks_together_within_the_size_limit(
    bus: PlatformBus, connect: Connect
) -> None:
    small = [make_task(f"s-{i}", "a1", n=i) for i in range(10)]
    big = [make_task(f"b-{i}", "a1", blob="x" * (100 * 1024)) for i in range(3)]  # 2 fit in 256 KiB
    other = make_task("o-1", "a2")
    items = [("a", "a1", t) for t in small] + [("a", "a2", other)] + [("a", "a1", t) for t in big]
    results = await bus.deliver_many(items, batching={"a1"})
    assert all(isinstance(r, int) for r in results)
    a1_seqs = results[:10] + results[11:]
    assert len(set(a1_seqs[:12])) == 1 and a1_seqs[12] != a1_seqs[0]  # 12 fit in one message
    assert results[10] not in a1_seqs  # a2 does not read batches: alone
    assert await bus.deliver_many(items, batching={"a1"}) == results  # stored once

    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    pull = await a1.nc.jetstream().pull_subscribe_bind(durable="a1", stream=subjects.INBOX_STREAM)
    bodies: list[dict[str, Any]] = []
    while sum(len(b.get("batch", [b])) for b in bodies) < 13:
        for msg in await pull.fetch(10, timeout=2):
            bodies.append(json.loads(msg.data))
            await msg.ack()
    assert [len(b["batch"]) if "batch" in b else 1 for b in bodies] == [12, 1]
    got = [TaskMessage.from_wire(m) for b in bodies for m in b.get("batch", [b])]
    assert got == small + big  # in order, nothing lost, nothing twice


@pytest.mark.usefixtures("orgs")
async def test_a_full_inbox_fails_only_the_tasks_that_did_not_fit(bus: PlatformBus) -> None:
    await bus.ensure_org("a", dataclasses.replace(LIMITS, inbox_max_bytes=4096))
    results = await bus.deliver_many(
        [("a", "a1", make_task(f"t{i}", "a1", blob="x" * 512)) for i in range(20)]
    )
    stored = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if not isinstance(r, int)]
    assert stored and refused
    assert all(isinstance(r, QuotaExceeded) for r in refused), refused


@pytest.mark.usefixtures("orgs")
async def test_an_agents_batch_arrives_as_its_events_and_is_acknowledged_once(
    bus: PlatformBus, connect: Connect
) -> None:
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    done = [
        TaskMessage(f"t-{i}", "a1", "platform", MessageType.COMPLETE, {"n": i}) for i in range(5)
    ]
    batch = messages.encode({"batch": [m.to_wire() for m in done]})
    await a1.nc.publish(subjects.agent_events("a", "a1"), batch)
    await a1.nc.publish(subjects.agent_events("a", "a1"), b'{"batch": []}')  # malformed
    await a1.nc.flush()
    events: list[BusEvent] = []
    async for got in bus.event_batches(wait=0.2):
        events.extend(got)
        if len(events) >= 5:
            break
    assert [e.message for e in events] == done
    assert {(e.org, e.agent_id, e.kind) for e in events} == {("a", "a1", EventKind.EVENTS)}
    for event in events:  # each event may be acknowledged: the message is, once
        await event.ack()

    async def settled() -> bool:
        return await bus.events_backlog() == 0

    await eventually(settled, message="the batch acknowledged, the malformed one dropped")


@pytest.mark.usefixtures("orgs")
async def test_events_are_kept_while_no_platform_consumer_runs(
    server: EmbeddedNats, authority: BusAuthority, bus: PlatformBus, connect: Connect
) -> None:
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    await a1.nc.publish(subjects.agent_status("a", "a1"), _status("a1", 1))
    await a1.nc.flush()
    [first] = await _take(bus, 1)
    assert (first.org, first.agent_id, first.kind) == ("a", "a1", EventKind.STATUS)

    await bus.__aexit__(None, None, None)  # the control plane goes away
    done = TaskMessage("t-9", "a1", "platform", MessageType.COMPLETE, {"result": 42})
    await a1.nc.publish(subjects.agent_events("a", "a1"), messages.encode(done.to_wire()))
    await a1.nc.publish(subjects.PLATFORM_STATUS, _status("a1", 2))
    await a1.nc.flush()

    async with PlatformBus(server.url, authority) as again:
        await again.ensure_org("a", LIMITS)  # as the control plane does for every org at start
        later = await _take(again, 2)
    assert [(e.org, e.agent_id, e.kind) for e in later] == [
        ("a", "a1", EventKind.EVENTS),
        ("a", "a1", EventKind.PLATFORM_STATUS),
    ]
    assert later[0].message == done
    assert not later[1].agent_vouched


@pytest.mark.usefixtures("orgs")
async def test_events_a_gone_control_plane_held_unacknowledged_are_released_at_once(
    server: EmbeddedNats, authority: BusAuthority, bus: PlatformBus, connect: Connect
) -> None:
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    for n in (1, 2):
        await a1.nc.publish(subjects.agent_status("a", "a1"), _status("a1", n))
    await a1.nc.flush()
    held: list[BusEvent] = []
    async for got in bus.event_batches(wait=0.2):  # received, never acknowledged
        held.extend(got)
        if len(held) >= 2:
            break
    await bus.__aexit__(None, None, None)  # the control plane dies holding them

    async with PlatformBus(server.url, authority) as again:
        await again.ensure_org("a", LIMITS)
        assert await again.release_events("a") == 2
        # they come again now: without the release, not before the ack wait had run out
        later = await asyncio.wait_for(_take(again, 2), timeout=streams.EVENTS_ACK_WAIT - 5)

        async def acknowledged() -> bool:  # an ack is sent, not awaited: wait till it lands
            return await again.events_backlog() == 0

        await eventually(acknowledged, timeout=30, message="the events taken acknowledged")
        assert await again.release_events("a") == 0  # nothing held: the consumer is kept
    assert [e.message for e in later] == [e.message for e in held]


@pytest.mark.usefixtures("orgs")
async def test_control_requests_reach_only_the_named_agent_and_return_its_reply(
    bus: PlatformBus, connect: Connect
) -> None:
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))

    async def checkpoint(msg: Msg) -> None:
        asked = ControlMessage.from_wire(json.loads(msg.data))
        await msg.respond(messages.encode({"saved": asked.kind.value}))

    await a1.nc.subscribe(subjects.agent_control("a", "a1"), cb=checkpoint)
    await a1.nc.flush()
    reply = await bus.control("a", "a1", ControlMessage(ControlKind.CHECKPOINT), timeout=2)
    assert reply == {"saved": "checkpoint"}
    with pytest.raises(Unavailable):
        await bus.control("a", "a2", ControlMessage(ControlKind.STOP), timeout=0.5)


@pytest.mark.usefixtures("orgs")
async def test_a_broadcast_reaches_the_agents_of_every_org(
    bus: PlatformBus, connect: Connect
) -> None:
    got: dict[str, list[dict[str, object]]] = {"a": [], "b": []}
    for org, agent in (("a", "a1"), ("b", "b1")):
        peer = await connect(bus.mint_agent_creds(org, agent, ttl_seconds=60))

        async def record(msg: Msg, org: str = org) -> None:
            got[org].append(json.loads(msg.data))

        await peer.nc.subscribe(f"{subjects.BROADCAST_PREFIX}.>", cb=record)
        await peer.nc.flush()

    async def both_listening() -> bool:
        # core NATS delivers to whoever listens now: make sure both orgs' interest has reached
        # the platform's account before the broadcast that is counted
        await bus.broadcast("hello", {"probe": True})
        return all(any(m.get("probe") for m in got[org]) for org in got)

    await eventually(both_listening, interval=0.05, message="both orgs' agents listening")
    for org in got:
        got[org].clear()
    await bus.broadcast("maintenance", {"at": "02:00"})

    def exactly_once() -> bool:
        later = {org: [m for m in msgs if not m.get("probe")] for org, msgs in got.items()}
        assert later == {"a": [{"at": "02:00"}], "b": [{"at": "02:00"}]}, later
        return True

    await eventually(exactly_once, message="the broadcast reached each org once")


async def test_onboarding_orgs_while_another_streams_drops_no_connection_and_no_message(
    bus: PlatformBus, connect: Connect
) -> None:
    await bus.ensure_org("b", LIMITS)
    b1 = await connect(bus.mint_agent_creds("b", "b1", ttl_seconds=60))
    small = dataclasses.replace(
        LIMITS, jetstream_storage=MiB, inbox_max_bytes=MiB // 2, events_max_bytes=MiB // 2
    )
    # b1 publishes as fast as it can for as long as the onboarding takes, and a publish
    # without a reply never hears that EVENTS refused it. Were nothing read meanwhile, a slow
    # onboarding would fill b's EVENTS (LIMITS.events_max_bytes: some 46,000 of these) and
    # the stream would rightly refuse the rest, as a full stream must. So the control plane
    # reads while b1 streams, and b1 keeps at most ``ahead`` events (under 1 MB) unread: the
    # stream is never full, and an event missing at the end was lost.
    ahead = 5_000
    onboarded = asyncio.Event()
    sent = 0
    taken: list[int] = []
    orgs: set[str] = set()

    async def take() -> None:
        async for event in bus.events(wait=0.2):
            taken.append(event.message.detail["n"])  # type: ignore[union-attr]
            orgs.add(event.org)
            await event.ack()

    def caught_up() -> bool:
        return sent - len(taken) < ahead

    async def stream() -> None:
        nonlocal sent
        while not onboarded.is_set() or sent < 500:
            if not caught_up():
                await eventually(caught_up, timeout=20, message="the feed keeps up")
            await b1.nc.publish(
                subjects.agent_status("b", "b1"),
                _status("b1", sent),
                headers={"Nats-Msg-Id": f"b1-{sent}"},  # as the SDK does: EVENTS keeps it once
            )
            sent += 1
            if sent % 20 == 0:
                await asyncio.sleep(0)
        await b1.nc.flush()

    async def onboard() -> None:
        for k in range(6):
            await bus.ensure_org(f"new{k}", small)
        onboarded.set()

    def all_read() -> bool:
        if len(taken) >= sent:
            return True
        missing = sorted(set(range(sent)) - set(taken))
        raise AssertionError(f"{len(missing)} of {sent} events missing, first {missing[:10]}")

    reader = asyncio.create_task(take())
    try:
        await asyncio.gather(stream(), onboard())
        await eventually(all_read, timeout=20, message="every event read")
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    assert sorted(taken) == list(range(sent))  # and none twice
    assert orgs == {"b"}
    assert b1.disconnects == 0 and b1.nc.is_connected
    assert bus.connection.is_connected


async def test_a_tenant_over_the_servers_jetstream_caps_is_refused_with_the_numbers(
    bus: PlatformBus,
) -> None:
    await bus.ensure_org("a", LIMITS)
    huge = dataclasses.replace(LIMITS, jetstream_storage=CAPS.storage)
    with pytest.raises(Conflict) as refused:
        await bus.ensure_org("huge", huge)
    assert "huge" in refused.value.message
    assert "512 MiB storage" in refused.value.message
    assert refused.value.details["reserved_storage"] == LIMITS.jetstream_storage
    assert bus.authority.orgs() == ["a"]
    await bus.deliver("a", "x", make_task("still-works", "x"))

    fits = dataclasses.replace(huge, jetstream_storage=CAPS.storage - 32 * MiB)
    await bus.ensure_org("fits", fits)  # exactly up to the cap is fine


@pytest.mark.usefixtures("orgs")
async def test_removing_an_org_closes_its_connections_and_frees_its_reservation(
    bus: PlatformBus, connect: Connect
) -> None:
    creds = bus.mint_agent_creds("b", "b1", ttl_seconds=60)
    live = await connect(creds, reconnect=False)
    await bus.remove_org("b")
    await eventually(lambda: live.nc.is_closed, message="org connection closed")
    with pytest.raises(nats.errors.Error):
        await connect(creds, reconnect=False)
    assert bus.authority.orgs() == ["a"]
    with pytest.raises(NotFound):
        await bus.deliver("b", "b1", make_task("t", "b1"))
    await bus.remove_org("b")  # idempotent
    await bus.ensure_org("b", LIMITS)  # and the slug can come back, with a new account
    await bus.prepare_agent("b", "b1")
    assert await bus.deliver("b", "b1", make_task("again", "b1")) == 1


@pytest.mark.usefixtures("orgs")
async def test_removing_an_agent_revokes_it_and_drops_its_queue(
    bus: PlatformBus, connect: Connect
) -> None:
    await bus.deliver("a", "a1", make_task("queued", "a1"))
    live = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60), reconnect=False)
    await bus.remove_agent("a", "a1")
    await eventually(lambda: live.nc.is_closed)
    admin = await connect(bus.authority.mint_org_admin_creds("a"), name="a-admin")
    js = admin.nc.jetstream()
    assert (await js.stream_info(subjects.INBOX_STREAM)).state.messages == 0
    names = [c.name for c in await js.consumers_info(subjects.INBOX_STREAM)]
    assert sorted(names) == ["a2"]


@pytest.mark.usefixtures("orgs")
async def test_an_orgs_link_is_shared_then_replaced_before_its_credentials_expire(
    bus: PlatformBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.bus import links as module

    opened: list[str] = []
    real_open = module.open_connection  # type: ignore[attr-defined]  # links' own name, patched below

    async def counting(*args: Any, **kwargs: Any) -> Any:
        opened.append(kwargs["name"])
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(module, "open_connection", counting)
    await asyncio.gather(*(bus.prepare_agent("a", f"p{i}") for i in range(3)))
    assert opened == []  # onboarding the org opened it; these three reuse it
    first = bus.links.peek("a")
    assert first is not None and first.nc.is_connected  # one connection served all three
    first.opened -= module.LINK_TTL_SECONDS  # as if opened an hour ago
    await bus.prepare_agent("a", "p-late")
    assert opened == ["a-platform-link"]
    second = bus.links.peek("a")
    assert second is not None and second is not first and second.nc.is_connected
    await eventually(lambda: first.nc.is_closed, message="the old link closed once its feed ended")
    await bus.remove_org("a")
    assert bus.links.peek("a") is None and second.nc.is_closed


class _Counting:
    """An event's acknowledgement that records being called."""

    def __init__(self, real: Any, i: int, acked: list[int]) -> None:
        self.real, self.i, self.acked = real, i, acked
        self.cumulative, self.releases = real.cumulative, real.releases

    async def __call__(self) -> None:
        self.acked.append(self.i)
        await self.real()


@pytest.mark.usefixtures("orgs")
async def test_a_recorded_batch_is_acknowledged_by_its_last_message_and_leaves_the_stream(
    bus: PlatformBus, connect: Connect
) -> None:
    from nats.js.api import AckPolicy

    admin = await connect(bus.authority.mint_org_admin_creds("a"), name="a-admin")
    js = admin.nc.jetstream()
    info = await js.consumer_info(subjects.EVENTS_STREAM, "control-plane")
    assert info.config.ack_policy == AckPolicy.ALL
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    for n in range(4):
        await a1.nc.publish(subjects.agent_status("a", "a1"), _status("a1", n))
    await a1.nc.flush()
    got: list[BusEvent] = []
    async for batch in bus.event_batches(wait=0.2):
        got.extend(batch)
        if len(got) >= 4:
            break
    acked: list[int] = []
    got = [dataclasses.replace(e, ack=_Counting(e.ack, i, acked)) for i, e in enumerate(got)]
    await bus.acknowledge(got)
    assert acked == [3]  # the last message alone

    async def settled() -> bool:
        return await bus.events_backlog() == 0

    await eventually(settled, message="the whole batch acknowledged")
    stream = await js.stream_info(subjects.EVENTS_STREAM)
    assert stream.state.messages == 0  # interest retention: acknowledged means gone


@pytest.mark.usefixtures("orgs")
async def test_an_orgs_next_batch_waits_for_the_last_to_be_acknowledged_and_others_go_between(
    bus: PlatformBus, connect: Connect
) -> None:
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    b1 = await connect(bus.mint_agent_creds("b", "b1", ttl_seconds=60))
    for n in range(600):  # a backlog of more than two batches
        await a1.nc.publish(subjects.agent_status("a", "a1"), _status("a1", n))
    await a1.nc.flush()
    await b1.nc.publish(subjects.agent_status("b", "b1"), _status("b1", 0))
    await b1.nc.flush()

    # what the control plane takes at once holds whatever batches wait, one per org at most
    rounds: list[set[str]] = []
    seen_a: list[int] = []
    async for batch in bus.event_batches():
        of_a = [e.message.detail["n"] for e in batch if e.org == "a"]  # type: ignore[union-attr]
        assert len(of_a) <= 256  # at most one of a's batches (the bus's events_batch)
        rounds.append({e.org for e in batch})
        seen_a += of_a
        await bus.acknowledge(batch)
        if len(seen_a) >= 600 and any("b" in orgs for orgs in rounds):
            break
    assert seen_a == list(range(600))  # in order, once
    first_b = next(n for n, orgs in enumerate(rounds) if "b" in orgs)
    assert first_b < 3, rounds  # b's one event did not wait behind a's whole backlog
    assert sum("a" in orgs for orgs in rounds) >= 3  # a's backlog came a batch at a time


async def test_an_orgs_event_feed_asks_again_at_once_when_the_server_restarted_under_it(
    server: EmbeddedNats, authority: BusAuthority, connect: Connect
) -> None:
    """The control plane's long poll on an org's EVENTS dies with a server that is killed
    (and restarted on its URL); on reconnecting it asks the new one at once, so an event
    sent after the restart is read, not left until the lost poll would have expired."""
    async with PlatformBus(server.url, authority, events_wait=300) as bus:
        await bus.ensure_org("a", LIMITS)
        await bus.prepare_agent("a", "a1")
        before = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
        await before.nc.publish(subjects.agent_status("a", "a1"), _status("a1", 0))
        [first] = await asyncio.wait_for(_take(bus, 1), 60)
        assert first.message.detail == {"n": 0}  # type: ignore[union-attr]
        restarts = server.restarts
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        await eventually(lambda: server.restarts > restarts, timeout=60, message="restarted")
        after = await eventually(
            lambda: _connected(connect, bus), timeout=60, message="the agent connects again"
        )
        await after.nc.publish(subjects.agent_status("a", "a1"), _status("a1", 1))

        async def the_second() -> None:  # (the first may come again: the server was killed)
            async for event in bus.events(wait=0.2):
                await event.ack()
                if event.message.detail == {"n": 1}:  # type: ignore[union-attr]
                    return

        await asyncio.wait_for(the_second(), 60)  # not after the 300 s poll


async def _connected(connect: Connect, bus: PlatformBus) -> Peer | None:
    with contextlib.suppress(CorralError, nats.errors.Error, OSError):
        return await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    return None
