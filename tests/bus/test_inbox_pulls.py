"""An agent reads its inbox with :class:`~corral.sdk.pulls.Puller`, as the SDK does: a task
that arrives while the agent's long poll waits is handed over at once, not when the poll
expires (the NATS client's own ``fetch`` could keep it until then, the agent idle meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client, RawCredentials

from corral.bus import EmbeddedNats, PlatformBus
from corral.domain import subjects
from corral.domain.messages import decode
from corral.sdk.agent import inbox_messages
from corral.sdk.pulls import Puller
from tests.bus.conftest import Connect, make_task
from tests.support import eventually

#: far longer than the test may take: a message held until the poll expires fails it
LONG_POLL = 300.0


async def _puller(nc: Client, agent: str, *, timeout: float = 5.0) -> Puller:
    """A started reader of ``agent``'s inbox consumer over ``nc``."""
    puller = Puller(
        nc,
        stream=subjects.INBOX_STREAM,
        consumer=subjects.inbox_consumer(agent),
        max_bytes=1024 * 1024,
        timeout=timeout,
    )
    await puller.start()
    return puller


async def _inbox(connect: Connect, bus: PlatformBus, org: str, agent: str) -> Puller:
    peer = await connect(bus.mint_agent_creds(org, agent, ttl_seconds=60))
    return await _puller(peer.nc, agent)


async def _waiting_pulls(bus: PlatformBus, org: str, agent: str) -> int:
    async with bus.links.use(org) as link:
        info = await link.nc.jetstream().consumer_info(
            subjects.INBOX_STREAM, subjects.inbox_consumer(agent)
        )
    return int(info.num_waiting or 0)


async def _sent_during_the_poll(bus: PlatformBus, puller: Puller, agent: str, task_id: str) -> None:
    """Start a fetch, send ``task_id`` once its long poll waits at the server, and check the
    fetch hands it over (acknowledged) within the poll."""
    fetch = asyncio.create_task(puller.fetch(64, wait=LONG_POLL))

    async def polling() -> bool:
        return fetch.done() or await _waiting_pulls(bus, "a", agent) > 0

    await eventually(polling, message="the agent's long poll reached the server")
    await bus.deliver("a", agent, make_task(task_id, agent))
    await eventually(fetch.done, timeout=60, message=f"task {task_id} handed over in its poll")
    [msg] = fetch.result()
    assert [m.task_id for m in inbox_messages(decode(msg.data))] == [task_id]
    await msg.ack()


async def test_tasks_sent_one_at_a_time_during_the_long_poll_arrive_at_once(
    orgs: PlatformBus, connect: Connect
) -> None:
    puller = await _inbox(connect, orgs, "a", "a1")
    for n in range(20):  # one task at a time, each sent while the agent's poll waits
        await _sent_during_the_poll(orgs, puller, "a1", f"t{n}")
    await puller.stop()


async def test_what_waits_comes_in_one_pull_and_an_idle_inbox_answers_empty(
    orgs: PlatformBus, connect: Connect
) -> None:
    for n in range(5):
        await orgs.deliver("a", "a2", make_task(f"w{n}", "a2"))
    puller = await _inbox(connect, orgs, "a", "a2")
    got = await puller.fetch(64, wait=LONG_POLL)
    assert [inbox_messages(decode(m.data))[0].task_id for m in got] == [f"w{n}" for n in range(5)]
    for msg in got:
        await msg.ack()
    assert await puller.fetch(64, wait=0.2) == []  # nothing came within its wait
    await puller.stop()


async def test_an_agent_cannot_pull_another_orgs_inbox(orgs: PlatformBus, connect: Connect) -> None:
    await orgs.deliver("b", "b1", make_task("secret", "b1"))
    peer = await connect(orgs.mint_agent_creds("a", "a1", ttl_seconds=60))
    theirs = await _puller(peer.nc, "b1", timeout=1.0)
    # a's account has no such consumer: refused, or nothing
    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
        assert await theirs.fetch(64, wait=0.5) == []
    await theirs.stop()
    mine = await _inbox(connect, orgs, "b", "b1")
    [msg] = await mine.fetch(64, wait=LONG_POLL)
    assert inbox_messages(decode(msg.data))[0].task_id == "secret"  # still b1's
    await mine.stop()


async def test_a_message_now_and_then_costs_one_pull_and_a_backlog_still_comes_at_once(
    orgs: PlatformBus, connect: Connect
) -> None:
    """Each message says how many wait behind it: after one with none behind, the next fetch
    goes straight to its long poll, and a message with none behind ends the fetch; a backlog
    (messages with more behind them) is still fetched whole."""
    await orgs.prepare_agent("a", "a3")
    peer = await connect(orgs.mint_agent_creds("a", "a3", ttl_seconds=60))
    pulls: list[bytes] = []
    publish = peer.nc.publish

    async def counted(subject: str, payload: bytes = b"", **kw: Any) -> None:
        if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
            pulls.append(payload)
        await publish(subject, payload, **kw)

    peer.nc.publish = counted  # type: ignore[method-assign, assignment]
    puller = await _puller(peer.nc, "a3")
    sent = 10
    for n in range(sent):
        await _sent_during_the_poll(orgs, puller, "a3", f"s{n}")
    # the first fetch asks what waits (nothing) and then polls; each later one only polls
    assert len(pulls) == sent + 1, pulls

    for n in range(5):  # a backlog behind the long poll's first message
        await orgs.deliver("a", "a3", make_task(f"b{n}", "a3"))
    got = await puller.fetch(64, wait=LONG_POLL)
    assert [inbox_messages(decode(m.data))[0].task_id for m in got] == [f"b{n}" for n in range(5)]
    for msg in got:
        await msg.ack()
    assert len(pulls) == sent + 3  # the poll that brought b0, then one for the four behind it
    await puller.stop()


async def test_redeliveries_waiting_come_in_one_fetch(orgs: PlatformBus, connect: Connect) -> None:
    """Messages due again (here: refused with a nak, as after a takeover the events the old
    leader held) are not in the count a message carries of those behind it: one that is a
    redelivery makes the fetch ask for the rest too."""
    await orgs.prepare_agent("a", "a4")
    puller = await _inbox(connect, orgs, "a", "a4")
    for n in range(5):
        await orgs.deliver("a", "a4", make_task(f"r{n}", "a4"))
    first = await puller.fetch(64, wait=LONG_POLL)
    assert len(first) == 5
    for msg in first:
        await msg.nak()
    again = await puller.fetch(64, wait=LONG_POLL)
    assert [inbox_messages(decode(m.data))[0].task_id for m in again] == [f"r{n}" for n in range(5)]
    for msg in again:
        await msg.ack()
    await puller.stop()


async def test_a_long_poll_lost_with_a_restarted_server_is_asked_again_at_once(
    orgs: PlatformBus, server: EmbeddedNats
) -> None:
    """The agent's long poll dies with the server that held it (killed, and restarted on its
    URL); on reconnecting, the SDK interrupts it, so the next task is not left unread until
    the lost poll would have expired."""
    await orgs.prepare_agent("a", "a5")
    creds = orgs.mint_agent_creds("a", "a5", ttl_seconds=60)
    readers: list[Puller] = []

    async def reconnected() -> None:  # as corral.sdk.agent wires it
        for reader in readers:
            reader.interrupt()

    nc = Client()
    await nc.connect(
        server.url,
        user_credentials=RawCredentials(creds.creds),
        inbox_prefix=creds.inbox_prefix,
        reconnected_cb=reconnected,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,  # type: ignore[arg-type]
    )
    try:
        puller = await _puller(nc, "a5")
        readers.append(puller)
        fetch = asyncio.create_task(puller.fetch(64, wait=LONG_POLL))
        await eventually(lambda: _waiting_pulls(orgs, "a", "a5"), message="the poll is out")
        restarts = server.restarts
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        await eventually(lambda: server.restarts > restarts, timeout=60, message="restarted")
        assert await asyncio.wait_for(fetch, 60) == []  # ended by the reconnect, not expired
        await orgs.deliver("a", "a5", make_task("after", "a5"))
        got = await asyncio.wait_for(puller.fetch(64, wait=LONG_POLL), 60)
        assert [inbox_messages(decode(m.data))[0].task_id for m in got] == ["after"]
        await puller.stop()
    finally:
        await nc.close()
