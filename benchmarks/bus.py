"""Bus benchmark: what the tenant boundary costs, on one embedded nats-server, loopback only.

Corral's paths: the control plane publishes a task into an org's INBOX over its own
connection in the org's account and awaits the JetStream PubAck, the agent (a least-privilege
user in the org's account) pulls and acks it; a control request goes the same way to the agent
and its reply comes back. Next to them, on the same server in the same run, the peers: plain
core NATS publish/subscribe and request/reply inside one account, and JetStream
publish/pull/ack inside one account. Also: onboarding a tenant (account JWT push, INBOX and
EVENTS creation) as the number of tenants grows, with the size of PLATFORM's JWT, which no
longer grows with them.

Run: ``python benchmarks/bus.py [--tasks N] [--requests N] [--orgs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import nats
from nats.aio.client import Client, RawCredentials
from nats.aio.msg import Msg

from corral.bus import (
    BusAuthority,
    EmbeddedNats,
    JetStreamCaps,
    PlatformBus,
    ServerOptions,
    streams,
)
from corral.domain import messages, subjects
from corral.domain.messages import ControlKind, ControlMessage, MessageType, TaskMessage
from corral.domain.plans import BusLimits

MiB = 1024 * 1024
CAPS = JetStreamCaps(memory=256 * MiB, storage=4096 * MiB)
LIMITS = BusLimits(1000, 1024 * 1024, 0, 512 * MiB, 8, 1000, 256 * MiB, 128 * MiB)
SMALL = BusLimits(20, 64 * 1024, 0, 1 * MiB, 2, 16, 512 * 1024, 512 * 1024)
PAYLOAD = {"prompt": "x" * 60}  # a task of ~170 bytes on the wire


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


async def connect(url: str, creds: str, *, inbox_prefix: str = "_INBOX") -> Client:
    return await nats.connect(
        url,
        user_credentials=RawCredentials(creds),
        inbox_prefix=inbox_prefix,
        pending_size=64 * MiB,
    )


async def windowed(total: int, window: int, one: Callable[[int], Awaitable[object]]) -> None:
    """Run ``one(i)`` for every i with at most ``window`` in flight."""
    nxt = 0

    async def worker() -> None:
        nonlocal nxt
        while nxt < total:
            i, nxt = nxt, nxt + 1
            await one(i)

    await asyncio.gather(*(worker() for _ in range(window)))


async def pull_all(nc: Client, durable: str, total: int) -> None:
    pull = await nc.jetstream().pull_subscribe_bind(durable=durable, stream=subjects.INBOX_STREAM)
    done = 0
    while done < total:
        try:
            batch = await pull.fetch(min(streams.AGENT_MAX_ACK_PENDING, total - done), timeout=5)
        except nats.errors.TimeoutError:
            raise SystemExit(f"only {done} of {total} tasks arrived") from None
        for msg in batch:
            await msg.ack()
        done += len(batch)


async def inbox_rate(bus: PlatformBus, agent: Client, total: int, window: int) -> float:
    """Platform deliver (PubAck through the import) → agent fetch + ack, end to end."""
    start = time.perf_counter()

    async def one(i: int) -> None:
        await bus.deliver(
            "bench", "a1", TaskMessage(f"t{window}-{i}", "p", "a1", MessageType.DELEGATE, PAYLOAD)
        )

    await asyncio.gather(windowed(total, window, one), pull_all(agent, "a1", total))
    return total / (time.perf_counter() - start)


async def same_account_js_rate(admin: Client, agent: Client, total: int, window: int) -> float:
    """The peer: JetStream publish + PubAck inside the org's own account, same consumer."""
    js = admin.jetstream()
    body = messages.encode(TaskMessage("t", "p", "a1", MessageType.DELEGATE, PAYLOAD).to_wire())
    start = time.perf_counter()

    async def one(i: int) -> None:
        await js.publish(subjects.task_inbox("bench", "a1"), body)

    await asyncio.gather(windowed(total, window, one), pull_all(agent, "a1", total))
    return total / (time.perf_counter() - start)


async def core_pubsub_rate(pub: Client, sub: Client, total: int) -> float:
    """Core publish → subscribe inside one account, flushed every 500 so that the subscriber
    is not dropped as a slow consumer."""
    got = 0
    finished = asyncio.Event()

    async def count(_: Msg) -> None:
        nonlocal got
        got += 1
        if got == total:
            finished.set()

    subscription = await sub.subscribe("bench.core", cb=count, pending_msgs_limit=total + 1)
    await sub.flush()
    body = b"x" * 170
    start = time.perf_counter()
    for i in range(total):
        await pub.publish("bench.core", body)
        if i % 500 == 499:
            await pub.flush()
    await pub.flush()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), 10)
    await subscription.unsubscribe()
    if got < total:
        print(f"  (core: {total - got} of {total} messages dropped)")
    return got / (time.perf_counter() - start)


async def latencies(ask: Callable[[], Awaitable[object]], count: int) -> list[float]:
    for _ in range(50):  # warm up
        await ask()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await ask()
        samples.append(time.perf_counter() - start)
    return samples


async def onboarding(tmp: Path, orgs: int) -> list[tuple[int, float, int]]:
    """(tenants, seconds for the next ensure_org, PLATFORM JWT bytes) at a few sizes, on a
    server of its own."""
    caps = JetStreamCaps(CAPS.memory, CAPS.storage + orgs * SMALL.jetstream_storage)
    authority = BusAuthority(tmp / "bus-onboarding", caps=caps)
    marks = {1, 10, 25, 50, 100, 200, 400, 800} | {orgs}
    rows = []
    async with (
        EmbeddedNats(tmp / "nats-onboarding", authority.trust(), ServerOptions(caps=caps)) as s,
        PlatformBus(s.url, authority) as bus,
    ):
        for n in range(1, orgs + 1):
            start = time.perf_counter()
            await bus.ensure_org(f"t{n}", SMALL)
            took = time.perf_counter() - start
            if n in marks:
                rows.append((n, took, len(authority.platform_account_jwt())))
    return rows


async def main(tasks: int, requests: int, orgs: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="corral-bus-bench-") as tmp:
        authority = BusAuthority(Path(tmp) / "bus", caps=CAPS)
        async with (
            EmbeddedNats(Path(tmp) / "nats", authority.trust(), ServerOptions(caps=CAPS)) as server,
            PlatformBus(server.url, authority) as bus,
        ):
            await bus.ensure_org("bench", LIMITS)
            await bus.prepare_agent("bench", "a1")
            creds = bus.mint_agent_creds("bench", "a1", ttl_seconds=3600)
            agent = await connect(server.url, creds.creds, inbox_prefix=creds.inbox_prefix)
            admin = await connect(
                server.url, authority.mint_org_admin_creds("bench", ttl_seconds=3600)
            )
            admin2 = await connect(
                server.url, authority.mint_org_admin_creds("bench", ttl_seconds=3600)
            )

            async def answer(msg: Msg) -> None:
                await msg.respond(b'{"ok":true}')

            await agent.subscribe(subjects.agent_control("bench", "a1"), cb=answer)
            await admin2.subscribe("bench.echo", cb=answer)
            await agent.flush()
            await admin2.flush()

            print(f"nats-server {server.url}, one org, one agent, ~170-byte messages\n")
            print(
                "throughput                                          corral (boundary)   peer (one account)"
            )
            seq = await inbox_rate(bus, agent, tasks // 5, 1)
            peer_seq = await same_account_js_rate(admin, agent, tasks // 5, 1)
            print(
                f"  inbox: deliver awaiting each PubAck, pull + ack     {seq:>10,.0f}/s   {peer_seq:>10,.0f}/s  JetStream"
            )
            win = await inbox_rate(bus, agent, tasks, 64)
            peer_win = await same_account_js_rate(admin, agent, tasks, 64)
            print(
                f"  inbox: 64 deliveries in flight, pull + ack         {win:>10,.0f}/s   {peer_win:>10,.0f}/s  JetStream"
            )
            core = await core_pubsub_rate(admin, admin2, tasks * 4)
            print(
                f"  core publish → subscribe (no JetStream, no ack)    {'':>12}   {core:>10,.0f}/s  core NATS"
            )

            control = ControlMessage(ControlKind.CHECKPOINT)
            body = messages.encode(control.to_wire())
            cross = await latencies(
                lambda: bus.control("bench", "a1", control, timeout=2), requests
            )
            plain = await latencies(lambda: admin.request("bench.echo", body, timeout=2), requests)
            print(
                "\nround trip (sequential)                             corral (boundary)   peer (one account)"
            )
            for p in (50, 99):
                print(
                    f"  request/reply p{p:<3}                                {us(pct(cross, p)):>12}   {us(pct(plain, p)):>12}  core NATS"
                )

            for c in (agent, admin, admin2):
                await c.close()

        print("\nonboarding one more tenant (org JWT, INBOX, EVENTS): time, PLATFORM JWT size")
        for n, took, size in await onboarding(Path(tmp), orgs):
            print(f"  #{n:<6} {took * 1000:9.1f} ms {size:8,d} bytes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--orgs", type=int, default=100)
    args = parser.parse_args()
    started = time.perf_counter()
    asyncio.run(main(args.tasks, args.requests, args.orgs))
    print(f"\n({time.perf_counter() - started:.1f} s)")
