"""Hundreds of orgs on one server: no claim grows with them, a restart brings them all back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from nats.aio.client import RawCredentials

from corral.bus import BusAuthority, EmbeddedNats, JetStreamCaps, PlatformBus, ServerOptions
from corral.domain import subjects
from corral.domain.messages import MessageType, TaskMessage
from corral.domain.plans import PLANS
from tests.bus.conftest import MiB

ORGS = 300
FREE = PLANS["free"].bus
#: a test-sized server: the caps hold 300 free orgs' reservations, no more
CAPS = JetStreamCaps(memory=64 * MiB, storage=ORGS * FREE.jetstream_storage)


async def _ensure_all(bus: PlatformBus, orgs: list[str]) -> None:
    gate = asyncio.Semaphore(16)

    async def one(org: str) -> None:
        async with gate:
            await bus.ensure_org(org, FREE, lazy=True)  # as the control plane does

    await asyncio.gather(*(one(org) for org in orgs))


async def test_three_hundred_free_orgs_fit_and_come_back_after_a_restart(tmp_path: Path) -> None:
    authority = BusAuthority(tmp_path / "many", caps=CAPS)
    orgs = [f"org-{n:03d}" for n in range(ORGS)]
    async with EmbeddedNats(
        tmp_path / "many-nats", authority.trust(), ServerOptions(caps=CAPS)
    ) as s:
        async with PlatformBus(s.url, authority, idle_seconds=2.0) as bus:
            await bus.ensure_org(orgs[0], FREE, lazy=True)
            one = len(authority.platform_account_jwt())
            await _ensure_all(bus, orgs[1:])
            assert len(authority.platform_account_jwt()) == one  # nothing grows with the orgs
            assert authority.reserved() == (0, CAPS.storage)  # exactly full, no memory
            await bus.prepare_agent(orgs[-1], "last")  # the first agents make their streams
            await bus.prepare_agent(orgs[0], "a1")

        async with PlatformBus(s.url, authority) as again:  # the control plane restarts
            await _ensure_all(again, orgs)
            await again.ensure_streams(orgs[0])  # an org whose agent is back: read again
            task = TaskMessage("t-1", "platform", "last", MessageType.DELEGATE, {})
            assert await again.deliver(orgs[-1], "last", task) == 1
            creds = again.mint_agent_creds(orgs[0], "a1", ttl_seconds=60)
            first = await nats.connect(
                s.url, user_credentials=RawCredentials(creds.creds), inbox_prefix=creds.inbox_prefix
            )
            done = TaskMessage("t-0", "a1", "platform", MessageType.COMPLETE, {})
            await first.publish(subjects.agent_events(orgs[0], "a1"), _encode(done))
            await first.close()
            async for batch in again.event_batches():
                await again.acknowledge(batch)
                assert [(e.org, e.message) for e in batch] == [(orgs[0], done)]
                break


def _encode(message: TaskMessage) -> bytes:
    from corral.domain import messages

    return messages.encode(message.to_wire())
