"""Per-org fences: one org flooding the bus fills only its own share, the others go on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from corral.bus import BusAuthority, BusEvent, EmbeddedNats, PlatformBus, VaultRequest
from corral.bus.events import STATUS_MAX_BYTES
from corral.bus.resolver import ResolverClient
from corral.domain import messages, subjects
from corral.domain.messages import MessageType, StatusKind, StatusMessage, TaskMessage
from corral.sdk.outbox import Outbox
from tests.bus.conftest import LIMITS, Connect, MiB
from tests.support import eventually

#: a plan whose agents may send 1 MB messages, with a small EVENTS
FLOODABLE = dataclasses.replace(LIMITS, max_payload=MiB + 64 * 1024, events_max_bytes=4 * MiB)


def _status(agent: str, n: int) -> bytes:
    return messages.encode(StatusMessage(agent, StatusKind.WORKING, detail={"n": n}).to_wire())


class Recorder:
    """The control plane's side: records every event, acknowledges every batch."""

    def __init__(self, bus: PlatformBus) -> None:
        self.bus = bus
        self.events: list[BusEvent] = []
        self.flooding = False
        self.during_flood: list[BusEvent] = []

    async def run(self) -> None:
        async for batch in self.bus.event_batches():
            self.events.extend(batch)
            if self.flooding:
                self.during_flood.extend(batch)
            await self.bus.acknowledge(batch)

    def results(self, org: str) -> list[str]:
        return [
            e.message.task_id
            for e in self.events
            if e.org == org and isinstance(e.message, TaskMessage)
        ]


@contextlib.asynccontextmanager
async def recording(bus: PlatformBus) -> AsyncIterator[Recorder]:
    recorder = Recorder(bus)
    task = asyncio.create_task(recorder.run())
    try:
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _outbox(org: str, agent: str, nc: Client) -> Outbox:
    outbox = Outbox(org, agent)
    outbox.client = nc
    return outbox


def _done(task_id: str, agent: str, size: int = 10) -> TaskMessage:
    return TaskMessage(task_id, agent, "platform", MessageType.COMPLETE, {"r": "x" * size})


async def test_an_org_flooding_its_reports_fills_only_its_own_stream_and_the_others_go_on(
    bus: PlatformBus, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    await bus.ensure_org("a", FLOODABLE)
    await bus.ensure_org("b", LIMITS)
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60), name="a1")
    b1 = await connect(bus.mint_agent_creds("b", "b1", ttl_seconds=60), name="b1")
    a_out, b_out = _outbox("a", "a1", a1.nc), _outbox("b", "b1", b1.nc)
    blob = {"blob": "x" * 1_000_000}  # ~1 MB a status
    caplog.set_level(logging.WARNING, logger="corral.sdk")

    async with recording(bus) as recorder:
        recorder.flooding = True
        stop = asyncio.Event()

        async def flood() -> int:
            sent = 0
            while not stop.is_set():
                await a_out.status(StatusKind.WORKING, "t", 0.5, blob)
                if sent % 8 == 0:  # and big results, as many as it can get out
                    await a_out.event(_done(f"a-big-{sent}", "a1", size=900_000))
                    await a_out.settle(timeout=0.5)
                await a1.nc.flush()
                sent += 1
            return sent

        flooding = asyncio.create_task(flood())
        round_trips = 0
        while round_trips < 5 or not a_out.refused_statuses:  # B keeps working meanwhile
            task_id = f"b-{round_trips}"
            await b_out.status(StatusKind.HEARTBEAT)
            await b_out.event(_done(task_id, "b1"))

            def recorded(task_id: str = task_id) -> bool:
                return task_id in recorder.results("b")

            await eventually(
                recorded,
                timeout=20,
                message=f"B's {task_id} recorded during A's flood",
            )
            round_trips += 1
        stop.set()
        assert await flooding > 0
        recorder.flooding = False

        during = {e.org for e in recorder.during_flood}
        assert "b" in during  # B's events were consumed while A flooded
        assert a_out.refused_statuses > 0  # A was told: its stream is full
        assert any("did not keep" in r.getMessage() for r in caplog.records)
        assert bus.events_dropped.get("a", 0) > 0  # 1 MB statuses are never decoded
        assert "b" not in bus.events_dropped

        # once A stops, both work again: A's backlog drains, A's next report is kept
        await a_out.settle(timeout=30)
        await a_out.event(_done("a-after", "a1"))
        await b_out.event(_done("b-after", "b1"))
        await eventually(
            lambda: "a-after" in recorder.results("a") and "b-after" in recorder.results("b"),
            timeout=30,
            message="A's and B's reports after the flood",
        )


async def test_an_oversized_status_is_dropped_and_counted(
    bus: PlatformBus, connect: Connect
) -> None:
    await bus.ensure_org("a", LIMITS)
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    big = StatusMessage("a1", StatusKind.WORKING, detail={"x": "y" * STATUS_MAX_BYTES})
    await a1.nc.publish(subjects.agent_status("a", "a1"), messages.encode(big.to_wire()))
    await a1.nc.publish(subjects.agent_status("a", "a1"), _status("a1", 7))
    await a1.nc.flush()
    async for batch in bus.event_batches():
        await bus.acknowledge(batch)
        [event] = batch
        break
    assert isinstance(event.message, StatusMessage) and event.message.detail == {"n": 7}
    assert bus.events_dropped == {"a": 1}


async def test_an_idle_orgs_link_is_closed_and_reopened_when_an_agent_is_prepared(
    server: EmbeddedNats, authority: BusAuthority, connect: Connect
) -> None:
    async with PlatformBus(server.url, authority, idle_seconds=0.3, events_wait=0.1) as bus:
        await bus.ensure_org("a", LIMITS)
        first = bus.links.peek("a")
        assert first is not None
        await eventually(lambda: first.nc.is_closed, message="the idle org's link closed")
        assert len(bus.links) == 0

        a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
        await a1.nc.publish(subjects.agent_status("a", "a1"), _status("a1", 1))
        await a1.nc.flush()  # kept in A's EVENTS while nobody reads it
        await bus.prepare_agent("a", "a1")  # the org is active again
        async for batch in bus.event_batches():
            await bus.acknowledge(batch)
            assert [(e.org, e.agent_id) for e in batch] == [("a", "a1")]
            break


async def test_an_org_flooding_the_vault_is_refused_and_the_others_are_answered(
    server: EmbeddedNats, authority: BusAuthority, connect: Connect
) -> None:
    async def handler(request: VaultRequest) -> dict[str, object]:
        return {"value": request.org}

    async with PlatformBus(server.url, authority, vault_rate=1.0, vault_burst=3) as bus:
        for org in ("a", "b"):
            await bus.ensure_org(org, LIMITS)
        await bus.serve_vault(handler)
        a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
        b1 = await connect(bus.mint_agent_creds("b", "b1", ttl_seconds=60))
        replies = await asyncio.gather(
            *(a1.nc.request(subjects.VAULT_GET, b"{}", timeout=5) for _ in range(10))
        )
        answers = [json.loads(r.data) for r in replies]
        limited = [a for a in answers if "error" in a]
        assert len(answers) - len(limited) == 3  # the burst
        assert {a["error"]["code"] for a in limited} == {"rate_limited"}
        assert all(a["error"]["details"]["retry_after"] > 0 for a in limited)
        reply = await b1.nc.request(subjects.VAULT_GET, b"{}", timeout=5)
        assert json.loads(reply.data) == {"value": "b"}  # B's budget is its own


async def test_what_an_earlier_version_left_in_platform_is_drained_once_then_deleted(
    server: EmbeddedNats, authority: BusAuthority, tmp_path: Path, connect: Connect
) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
    from nats.js.errors import NotFoundError

    async with PlatformBus(server.url, authority) as bus:
        await bus.ensure_org("a", LIMITS)
    # as an earlier version left it: EVENTS in PLATFORM, with what orgs reported into it
    async with ResolverClient(server.url, authority.mint_system_creds()) as resolver:
        await resolver.push(authority.platform_account_jwt(legacy_events=True), name="PLATFORM")
    old, _ = authority._user_creds(authority._platform, "earlier", {}, None)
    peer = await connect(old, name="earlier-platform")
    js = peer.nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="EVENTS",
            subjects=["org.*.agents.*.status", "org.*.agents.*.events", "platform.agents.status.*"],
            max_bytes=MiB,
        )
    )
    await js.add_consumer(
        "EVENTS", ConsumerConfig(durable_name="control-plane", ack_policy=AckPolicy.ALL)
    )
    await js.publish(subjects.agent_status("a", "a1"), _status("a1", 1))
    done = _done("t-old", "a1")
    await js.publish(subjects.agent_events("a", "a1"), messages.encode(done.to_wire()))
    await js.publish("platform.agents.status.a", _status("a7", 2))

    async with PlatformBus(server.url, authority) as bus:
        await bus.ensure_org("a", LIMITS)
        a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
        await a1.nc.publish(subjects.agent_status("a", "a1"), _status("a1", 3))  # a new one
        await a1.nc.flush()
        got: list[BusEvent] = []
        async for batch in bus.event_batches():
            got.extend(batch)
            await bus.acknowledge(batch)
            if len(got) >= 4:
                break
        assert [(e.org, e.agent_id, e.kind.value) for e in got] == [
            ("a", "a1", "status"),
            ("a", "a1", "events"),
            ("a", "a7", "platform_status"),
            ("a", "a1", "status"),  # the org's own stream after what was left
        ]

        async def deleted() -> bool:
            try:
                await js.stream_info("EVENTS")
            except NotFoundError:
                return True
            except Exception:  # noqa: BLE001 - PLATFORM has no JetStream any more
                return True
            return False

        await eventually(deleted, message="the earlier EVENTS deleted")

        async def settled() -> bool:
            return await bus.events_backlog() == 0

        await eventually(settled, message="nothing left to read")


async def test_an_org_without_streams_opens_nothing_and_a_link_it_needs_once_idles_out(
    server: EmbeddedNats, authority: BusAuthority
) -> None:
    async with PlatformBus(server.url, authority, idle_seconds=0.3, events_wait=0.1) as bus:
        await bus.ensure_org("a", LIMITS, lazy=True)
        assert len(bus.links) == 0  # no connection, no stream: the account alone
        await bus.objects.delete("a", "nothing")  # a use that needs the org's link
        link = bus.links.peek("a")
        assert link is not None
        # its feed finds no EVENTS to read: the link still closes once idle
        await eventually(lambda: link.nc.is_closed, message="the streamless org's link closed")
        await bus.prepare_agent("a", "a1")  # the first agent makes the streams
        again = bus.links.peek("a")
        assert again is not None
        info = await again.js.stream_info(subjects.INBOX_STREAM)
        assert info.config.max_bytes == LIMITS.inbox_max_bytes
