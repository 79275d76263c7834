"""A real nats-server per test, a PlatformBus over it, and agents that connect like the SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client, RawCredentials

from corral.bus import (
    AgentCredentials,
    BusAuthority,
    EmbeddedNats,
    JetStreamCaps,
    PlatformBus,
    ServerOptions,
    ViolationRecorder,
)
from corral.domain.messages import MessageType, TaskMessage
from corral.domain.plans import BusLimits

MiB = 1024 * 1024
CAPS = JetStreamCaps(memory=64 * MiB, storage=512 * MiB)
LIMITS = BusLimits(
    max_connections=20,
    max_payload=256 * 1024,
    jetstream_memory=0,
    jetstream_storage=32 * MiB,
    max_streams=4,
    max_consumers=16,
    inbox_max_bytes=16 * MiB,
    events_max_bytes=8 * MiB,
)


@dataclass
class Peer:
    """One client connection and the violations the server reported on it."""

    nc: Client
    violations: ViolationRecorder
    disconnects: int = 0


Connect = Callable[..., Awaitable[Peer]]


def make_task(task_id: str, to: str, **payload: object) -> TaskMessage:
    """A delegation from the platform to agent ``to``."""
    return TaskMessage(task_id, "platform", to, MessageType.DELEGATE, dict(payload))


@pytest.fixture
def authority(tmp_path: Path) -> BusAuthority:
    return BusAuthority(tmp_path / "bus", caps=CAPS)


@pytest.fixture
async def server(tmp_path: Path, authority: BusAuthority) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path / "nats", authority.trust(), ServerOptions(caps=CAPS)) as s:
        yield s


@pytest.fixture
async def bus(server: EmbeddedNats, authority: BusAuthority) -> AsyncIterator[PlatformBus]:
    async with PlatformBus(server.url, authority, events_wait=0.5) as b:
        yield b


@pytest.fixture
async def connect(server: EmbeddedNats) -> AsyncIterator[Connect]:
    """Connect with creds text (an agent's, with its inbox prefix, or any other user's)."""
    peers: list[Peer] = []

    async def _connect(
        creds: AgentCredentials | str, *, reconnect: bool = True, name: str = "test"
    ) -> Peer:
        recorder = ViolationRecorder(name=name)
        text = creds.creds if isinstance(creds, AgentCredentials) else creds
        prefix = creds.inbox_prefix if isinstance(creds, AgentCredentials) else "_INBOX"
        peer = Peer(Client(), recorder)

        async def on_disconnect() -> None:
            peer.disconnects += 1

        try:
            await peer.nc.connect(
                server.url,
                user_credentials=RawCredentials(text),
                inbox_prefix=prefix,
                error_cb=recorder.on_error,
                disconnected_cb=on_disconnect,
                allow_reconnect=reconnect,
                max_reconnect_attempts=1,  # nats-py: 0 would retry the first connect forever
                reconnect_time_wait=0.2,  # type: ignore[arg-type]
                connect_timeout=2,
                name=name,
            )
        except BaseException:
            await peer.nc.close()  # nats-py leaves the socket open otherwise
            raise
        peers.append(peer)
        return peer

    yield _connect
    for peer in peers:
        if not peer.nc.is_closed:
            await peer.nc.close()


@pytest.fixture
async def orgs(bus: PlatformBus) -> PlatformBus:
    """Orgs ``a`` (agents a1, a2) and ``b`` (agent b1), each with its consumer."""
    for org in ("a", "b"):
        await bus.ensure_org(org, LIMITS)
    for org, agent in (("a", "a1"), ("a", "a2"), ("b", "b1")):
        await bus.prepare_agent(org, agent)
    return bus
