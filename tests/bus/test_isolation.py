"""Org A can neither see, reach, read nor impersonate org B, on a real server."""

from __future__ import annotations

import json

import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from corral.bus import BusEvent, EventKind, PlatformBus, VaultRequest
from corral.domain import messages, subjects
from corral.domain.errors import PermissionDenied
from corral.domain.messages import MessageType, StatusKind, StatusMessage, TaskMessage
from tests.bus.conftest import Connect
from tests.support import eventually

pytestmark = pytest.mark.usefixtures("orgs")


def _status(agent: str, *, detail: dict[str, str] | None = None) -> bytes:
    return messages.encode(StatusMessage(agent, StatusKind.WORKING, detail=detail or {}).to_wire())


def _task(task_id: str, to: str) -> TaskMessage:
    return TaskMessage(task_id, "platform", to, MessageType.DELEGATE, {"n": 1})


async def test_an_org_subscribed_to_everything_sees_nothing_of_a_busy_other_org(
    bus: PlatformBus, connect: Connect
) -> None:
    seen: list[str] = []

    async def record(msg: Msg) -> None:
        seen.append(msg.subject)

    spy = await connect(bus.authority.mint_org_admin_creds("a"), name="a-admin")
    await spy.nc.subscribe(">", cb=record)
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    with pytest.raises(PermissionDenied):  # an agent may not even ask
        await a1.nc.subscribe(">")
        await a1.nc.flush()
        await a1.violations.wait(5)
    await spy.nc.flush()

    b1 = await connect(bus.mint_agent_creds("b", "b1", ttl_seconds=60))
    for i in range(20):
        await bus.deliver("b", "b1", _task(f"t{i}", "b1"))
        await b1.nc.publish(subjects.agent_status("b", "b1"), _status("b1"))
    await bus.broadcast("hello", {"to": "everyone"})  # a sentinel A must see
    await eventually(lambda: "platform.broadcast.hello" in seen, message="broadcast at A")
    assert [s for s in seen if ".b." in s or s.startswith("org.b")] == []


async def test_publishing_into_another_orgs_subjects_reaches_nobody_there(
    bus: PlatformBus, connect: Connect
) -> None:
    seen: list[str] = []

    async def record(msg: Msg) -> None:
        seen.append(msg.subject)

    b_admin = await connect(bus.authority.mint_org_admin_creds("b"), name="b-admin")
    await b_admin.nc.subscribe(">", cb=record)
    await b_admin.nc.flush()
    a_admin = await connect(bus.authority.mint_org_admin_creds("a"), name="a-admin")
    for subject in (
        subjects.task_inbox("b", "b1"),
        subjects.agent_control("b", "b1"),
        subjects.agent_status("b", "b1"),
        subjects.broadcast("fake"),
    ):
        await a_admin.nc.publish(subject, b"{}")
    await a_admin.nc.flush()

    await bus.deliver("b", "b1", _task("sentinel", "b1"))
    await eventually(lambda: subjects.task_inbox("b", "b1") in seen, message="sentinel at B")
    # only the platform's delivery (and the stream's acknowledgement to the platform)
    assert [s for s in seen if not s.startswith(("_R_.", "_INBOX."))] == [
        subjects.task_inbox("b", "b1")
    ]
    inbox = await b_admin.nc.jetstream().stream_info(subjects.INBOX_STREAM)
    assert inbox.state.messages == 1


async def test_an_org_cannot_read_another_orgs_streams_or_consumers(
    bus: PlatformBus, connect: Connect
) -> None:
    await bus.deliver("b", "b1", _task("secret", "b1"))
    a_admin = await connect(bus.authority.mint_org_admin_creds("a"), name="a-admin")
    js = a_admin.nc.jetstream()

    names = sorted([info.config.name async for info in _streams(js)])
    assert names == [subjects.EVENTS_STREAM, subjects.INBOX_STREAM]  # A's own two
    inbox = await js.stream_info(subjects.INBOX_STREAM)
    assert inbox.config.subjects == [subjects.org_inboxes("a")]
    assert inbox.state.messages == 0
    events = await js.stream_info(subjects.EVENTS_STREAM)
    assert events.config.subjects is not None
    assert all(
        s.startswith("org.a.") or s == subjects.PLATFORM_STATUS for s in events.config.subjects
    )
    with pytest.raises(NotFoundError):
        await js.consumer_info(subjects.INBOX_STREAM, subjects.inbox_consumer("b1"))

    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    with pytest.raises(nats.errors.TimeoutError):
        await a1.nc.request("$JS.API.STREAM.INFO.INBOX", b"", timeout=0.5)
    with pytest.raises(PermissionDenied):
        a1.violations.check()


async def _streams(js: nats.js.JetStreamContext):  # type: ignore[no-untyped-def]
    for info in await js.streams_info():
        yield info


async def test_an_org_cannot_report_as_another_org(bus: PlatformBus, connect: Connect) -> None:
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    a_admin = await connect(bus.authority.mint_org_admin_creds("a"), name="a-admin")
    b1 = await connect(bus.mint_agent_creds("b", "b1", ttl_seconds=60))

    await a1.nc.publish(subjects.agent_status("b", "b1"), _status("b1"))  # refused
    await a_admin.nc.publish(subjects.agent_status("b", "b1"), _status("b1"))  # stays in A
    await a1.nc.publish(subjects.agent_status("a", "a1"), _status("b1", detail={"org": "b"}))
    await a1.nc.flush()
    await a_admin.nc.flush()
    await b1.nc.publish(subjects.agent_status("b", "b1"), _status("b1", detail={"real": "yes"}))

    events: list[BusEvent] = []
    async for event in bus.events(wait=0.2):
        events.append(event)
        await event.ack()
        if event.org == "b":
            break
    assert [(e.org, e.agent_id, e.kind) for e in events] == [
        ("a", "a1", EventKind.STATUS),
        ("b", "b1", EventKind.STATUS),
    ]
    assert isinstance(events[0].message, StatusMessage)
    assert events[0].message.agent_id == "a1"  # the subject, not the payload's claim
    assert events[1].message.detail == {"real": "yes"}  # type: ignore[union-attr]
    with pytest.raises(PermissionDenied):
        await a1.violations.wait(5)


async def test_a_vault_request_is_attributed_to_the_calling_org_whatever_it_claims(
    bus: PlatformBus, connect: Connect
) -> None:
    asked: list[VaultRequest] = []

    async def handler(request: VaultRequest) -> dict[str, object]:
        asked.append(request)
        return {"value": f"secret of {request.org}"}

    await bus.serve_vault(handler)
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    forged = json.dumps({"acc": bus.authority.org_account("b"), "user": "UFAKE"})
    reply = await a1.nc.request(
        subjects.VAULT_GET,
        b'{"name": "github-token", "org": "b"}',
        headers={"Nats-Request-Info": forged},
        timeout=5,
    )
    assert json.loads(reply.data) == {"value": "secret of a"}
    assert [(r.org, r.agent_id) for r in asked] == [("a", "a1")]
    assert asked[0].payload == {"name": "github-token", "org": "b"}


async def test_an_agent_cannot_read_another_agents_inbox_of_its_own_org(
    bus: PlatformBus, connect: Connect
) -> None:
    await bus.deliver("a", "a2", _task("for-a2", "a2"))
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))

    pull = await a1.nc.jetstream().pull_subscribe_bind(durable="a2", stream=subjects.INBOX_STREAM)
    with pytest.raises(nats.errors.TimeoutError):
        await pull.fetch(1, timeout=0.5)
    with pytest.raises(PermissionDenied):
        a1.violations.check()
    for subject in (
        subjects.task_inbox("a", "a2"),
        "_INBOX.a2.>",
        subjects.agent_control("a", "a2"),
    ):
        await a1.nc.subscribe(subject)
        with pytest.raises(PermissionDenied):
            await a1.violations.wait(5)
    await a1.nc.publish(subjects.task_inbox("a", "a2"), b"{}")
    with pytest.raises(PermissionDenied):
        await a1.violations.wait(5)

    a2 = await connect(bus.mint_agent_creds("a", "a2", ttl_seconds=60))
    mine = await a2.nc.jetstream().pull_subscribe_bind(durable="a2", stream=subjects.INBOX_STREAM)
    [msg] = await mine.fetch(2, timeout=2)
    assert TaskMessage.from_wire(json.loads(msg.data)).task_id == "for-a2"


async def test_revoked_credentials_are_refused_and_their_live_connection_closed(
    bus: PlatformBus, connect: Connect
) -> None:
    creds = bus.mint_agent_creds("a", "a1", ttl_seconds=60)
    live = await connect(creds, reconnect=False)
    other = await connect(bus.mint_agent_creds("a", "a2", ttl_seconds=60), reconnect=False)

    await bus.revoke_agent("a", "a1")
    await eventually(lambda: live.nc.is_closed, message="revoked connection closed")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await connect(creds, reconnect=False)
    assert other.nc.is_connected  # only a1 was revoked
    fresh = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60), reconnect=False)
    assert fresh.nc.is_connected  # a resumed agent gets new credentials


async def test_expired_credentials_are_refused_and_their_live_connection_closed(
    bus: PlatformBus, connect: Connect
) -> None:
    creds = bus.mint_agent_creds("a", "a1", ttl_seconds=1)
    live = await connect(creds, reconnect=False)
    await eventually(lambda: live.nc.is_closed, timeout=5, message="expired connection closed")

    async def refused() -> bool:
        try:
            peer = await connect(creds, reconnect=False)
        except nats.errors.Error as exc:
            return "Authorization Violation" in str(exc)
        await peer.nc.close()
        return False

    assert await eventually(refused, timeout=5)


async def test_a_permission_violation_reaches_the_caller(
    bus: PlatformBus, connect: Connect
) -> None:
    a1 = await connect(bus.mint_agent_creds("a", "a1", ttl_seconds=60))
    await a1.nc.publish(subjects.agent_status("a", "a2"), _status("a2"))
    with pytest.raises(PermissionDenied, match=subjects.agent_status("a", "a2")):
        await a1.violations.wait(5)

    # the platform's own user may not forge an agent's report either; the next call says so
    await bus.connection.publish(subjects.agent_status("a", "a1"), _status("a1"))

    async def refused() -> bool:
        try:
            await bus.broadcast("ping", {})
        except PermissionDenied:
            return True
        return False

    assert await eventually(refused)
    await bus.broadcast("ping", {})  # reported once, then the bus works again
