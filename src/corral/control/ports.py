"""What the services need from the bus, as a protocol: the NATS adapter
(:class:`corral.bus.platform.PlatformBus`) in production, fakes in unit tests above it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any, Protocol

from corral.bus.accounts import AgentCredentials
from corral.bus.events import BusEvent, EventKind
from corral.domain.errors import CorralError
from corral.domain.messages import ControlMessage, TaskMessage
from corral.domain.plans import BusLimits

__all__ = ["AgentCredentials", "BusEvent", "BusPort", "EventKind"]


class BusPort(Protocol):
    url: str

    async def ensure_org(self, org: str, limits: BusLimits, *, lazy: bool = False) -> None: ...

    async def remove_org(self, org: str) -> None: ...

    def mint_agent_creds(self, org: str, agent: str, *, ttl_seconds: int) -> AgentCredentials: ...

    async def prepare_agent(self, org: str, agent: str) -> None: ...

    async def revoke_agent(self, org: str, agent: str) -> None: ...

    async def remove_agent(self, org: str, agent: str) -> None: ...

    async def deliver(self, org: str, agent: str, task: TaskMessage) -> int: ...

    async def deliver_many(
        self,
        items: list[tuple[str, str, TaskMessage]],
        *,
        batching: Collection[str] = (),
    ) -> list[int | CorralError]: ...

    async def control(
        self, org: str, agent: str, message: ControlMessage, *, timeout: float | None = None
    ) -> dict[str, Any]: ...

    def events(self, *, batch: int = 64, wait: float = 1.0) -> AsyncIterator[BusEvent]: ...

    def event_batches(
        self, *, batch: int = 256, wait: float = 1.0
    ) -> AsyncIterator[list[BusEvent]]: ...

    async def acknowledge(self, events: list[BusEvent]) -> None: ...
