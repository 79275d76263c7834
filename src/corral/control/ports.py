"""What the services need from the bus, as protocols, so that they can be driven by the real
NATS adapter in production and by fakes in unit tests of the layers above it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from corral.domain.messages import ControlMessage, StatusMessage, TaskMessage
from corral.domain.plans import BusLimits

__all__ = ["AgentCredentials", "BusEvent", "BusPort"]


@dataclass(frozen=True, slots=True)
class AgentCredentials:
    creds: str  # the NATS creds file's content (JWT + seed)
    public_key: str
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class BusEvent:
    """Something an agent reported; ``org`` is what the server stamped, never the payload."""

    org: str
    agent_id: str
    status: StatusMessage | None
    task: TaskMessage | None
    ack: Callable[[], Awaitable[None]]


class BusPort(Protocol):
    url: str

    async def ensure_org(self, org: str, limits: BusLimits) -> None: ...

    async def remove_org(self, org: str) -> None: ...

    async def prepare_agent(self, org: str, agent_id: str) -> None: ...

    async def remove_agent(self, org: str, agent_id: str) -> None: ...

    async def mint_agent(
        self, org: str, agent_id: str, *, ttl_seconds: float
    ) -> AgentCredentials: ...

    async def revoke_agent(self, org: str, public_key: str) -> None: ...

    async def deliver(self, org: str, agent_id: str, message: TaskMessage) -> None: ...

    async def control(
        self, org: str, agent_id: str, message: ControlMessage, *, timeout: float
    ) -> dict[str, Any]: ...

    def events(self) -> AsyncIterator[BusEvent]: ...
