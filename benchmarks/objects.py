"""Object store benchmark: big payloads and results through an org's own object store, on one
embedded nats-server, loopback only.

Corral's paths: an agent (a least-privilege user in the org's account) puts a result with
``corral.sdk.objects.put`` — unpaced here, to see the mechanism; an agent's real puts are
paced at half its org's ingress budget — and the control plane reads it back over its link
(``PlatformBus.objects.get``), as ``GET`` of a task does. Next to them, on the same server in
the same run, the peer: nats-py's own object store (``js.create_object_store``, ``put``,
``get``) with an unrestricted user in one account.

Run: ``python benchmarks/objects.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client, RawCredentials
from nats.js.api import ObjectStoreConfig, StorageType

from corral.bus import BusAuthority, EmbeddedNats, JetStreamCaps, PlatformBus, ServerOptions
from corral.domain import objects
from corral.domain.plans import BusLimits
from corral.sdk import objects as object_io

MiB = 1024 * 1024
CAPS = JetStreamCaps(memory=64 * MiB, storage=2048 * MiB)
LIMITS = BusLimits(100, MiB, 0, 800 * MiB, 8, 128, 16 * MiB, 16 * MiB, 8 * MiB, 50_000, 512 * MiB)
SIZES = (256 * 1024, 2 * MiB, 16 * MiB, 64 * MiB)


async def connect(url: str, creds: str, *, inbox_prefix: str = "_INBOX") -> Client:
    return await nats.connect(
        url, user_credentials=RawCredentials(creds), inbox_prefix=inbox_prefix.encode()
    )


async def best(rounds: int, one: Callable[[int], Awaitable[object]]) -> float:
    """The median of ``rounds`` timings of ``one(round)``, in seconds."""
    times = []
    for r in range(rounds):
        start = time.perf_counter()
        await one(r)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def speed(size: int, seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms {size / MiB / seconds:7.0f} MiB/s"


async def one_size(size: int, rounds: int, js: Any, bus: PlatformBus, peer: Any) -> None:
    data = os.urandom(size)
    refs: list[objects.ObjectRef] = []
    task = f"task_{size}"

    async def ours(r: int) -> None:
        refs.append(await object_io.put(js, objects.result_name(task, r), data))

    async def theirs(r: int) -> None:
        await peer.put(f"o{size}.{r}", data)

    async def read(r: int) -> None:
        await bus.objects.get("bench", refs[r], limit=1 << 30)

    async def peer_read(r: int) -> None:
        await peer.get(f"o{size}.{r}")

    put, peer_put = await best(rounds, ours), await best(rounds, theirs)
    # nats-py's get joins chunks by repeated concatenation: minutes at 64 MiB, so once there
    get, peer_get = (
        await best(rounds, read),
        await best(1 if size >= 64 * MiB else rounds, peer_read),
    )
    print(f"{size / MiB:>7.2f} MiB  put {speed(size, put)}   {speed(size, peer_put)}")
    print(f"{'':>11} get {speed(size, get)}   {speed(size, peer_get)}")
    await bus.objects.delete_tasks("bench", [(task, rounds)])


async def main(rounds: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="corral-objects-bench-") as tmp:
        authority = BusAuthority(Path(tmp) / "bus", caps=CAPS)
        async with (
            EmbeddedNats(Path(tmp) / "nats", authority.trust(), ServerOptions(caps=CAPS)) as server,
            PlatformBus(server.url, authority) as bus,
        ):
            await bus.ensure_org("bench", LIMITS)
            creds = bus.mint_agent_creds("bench", "a1", ttl_seconds=3600)
            agent = await connect(server.url, creds.creds, inbox_prefix=creds.inbox_prefix)
            admin = await connect(server.url, authority.mint_org_admin_creds("bench"))
            peer = await admin.jetstream().create_object_store(
                "PEER", ObjectStoreConfig(storage=StorageType.FILE, max_bytes=256 * MiB)
            )
            js = agent.jetstream(timeout=30)
            print(f"nats-server {server.url}, one org, median of {rounds} rounds\n")
            print("put: an agent's connection (corral) / one unrestricted user (peer)")
            print("get: the control plane's link (corral) / the same user (peer)\n")
            print(f"{'size':>11}     {'corral':>26}   {'peer: nats-py object store':>26}")
            for size in SIZES:
                await one_size(size, rounds, js, bus, peer)
            for c in (agent, admin):
                await c.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args().rounds))
