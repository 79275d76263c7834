"""What an agent tells the platform: its statuses, and task events batched per loop turn.

Statuses (ready, accepted, working, idle, heartbeat, ...) leave as they happen. Task events
(results and delegation requests) queued in one turn of the event loop leave as one message,
``{"batch": [...]}`` when there are several, in order: an agent finishing many tasks at once
costs the platform one message, not one each. While the connection lives nothing queued is
dropped: a publish that fails is retried, in order, with backoff. What an agent that dies
loses is recovered by the platform (the agent is lost, its work retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nats.aio.client import Client

from corral.domain import subjects, wire
from corral.domain.messages import MessageType, StatusKind, StatusMessage, TaskMessage, encode

__all__ = ["EVENTS_PER_MESSAGE", "Outbox"]

log = logging.getLogger("corral.sdk")

#: The most task messages the SDK puts in one events message, well under what the platform
#: takes (:data:`~corral.domain.wire.EVENTS_BATCH_MAX`); a longer queue leaves in several.
EVENTS_PER_MESSAGE = 256
assert EVENTS_PER_MESSAGE <= wire.EVENTS_BATCH_MAX


class Outbox:
    """An agent's reports to the platform over :attr:`client` (None until connected; nothing
    is sent while it is None or closed)."""

    def __init__(self, org: str, agent_id: str, *, max_payload: int = 1024 * 1024) -> None:
        self.client: Client | None = None
        self._max_payload = max_payload  # what the org's bus account carries
        self._agent_id = agent_id
        self._status_subject = subjects.agent_status(org, agent_id)
        self._events_subject = subjects.agent_events(org, agent_id)
        self._queue: list[dict[str, Any]] = []  # events not yet published, in order
        self._sending: asyncio.Future[None] | None = None

    async def status(
        self,
        kind: StatusKind,
        task: str | None = None,
        progress: float | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Publish a status of this agent."""
        if self.client is None or self.client.is_closed:
            return
        msg = StatusMessage(self._agent_id, kind, task, progress, detail or {})
        # no flush per message: the client sends its buffer at once, in order
        await self.client.publish(self._status_subject, encode(msg.to_wire()))

    async def event(self, message: TaskMessage) -> None:
        """Queue ``message`` for the events subject; it leaves with the rest of this turn's."""
        self._queue.append(message.to_wire())
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._send())
        elif len(self._queue) >= EVENTS_PER_MESSAGE:
            await asyncio.shield(self._sending)  # let a long batch leave before adding more

    async def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the events being sent to leave."""
        if self._sending is not None and not self._sending.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._sending), timeout=timeout)

    async def _send(self) -> None:
        await asyncio.sleep(0)  # the rest of this turn's events join the batch
        backoff = 0.05
        while self._queue:
            if self.client is None or self.client.is_closed:
                return  # gone: the platform sees the agent lost and retries its work
            batch = self._queue[:EVENTS_PER_MESSAGE]
            self._queue = self._queue[EVENTS_PER_MESSAGE:]
            try:
                await self._publish(batch)
            except Exception as exc:  # e.g. the buffer is full during a long reconnect
                log.warning("could not report %d events (%s); retrying", len(batch), exc)
                self._queue = batch + self._queue  # nothing is dropped, order is kept
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05

    async def _publish(self, batch: list[dict[str, Any]]) -> None:
        assert self.client is not None
        limit = min(self.client.max_payload or self._max_payload, self._max_payload)
        data = encode(wire.batch_to_wire(batch, cap=EVENTS_PER_MESSAGE))
        if len(data) <= limit:
            await self.client.publish(self._events_subject, data)
            return
        for item in batch:  # too big together: one at a time
            one = encode(item)
            if len(one) > limit:  # a result the bus cannot carry: the task fails
                log.error(
                    "the result of %s is %d bytes, over %d", item.get("taskId"), len(one), limit
                )
                reason = f"result too large ({len(one)} bytes, max {limit})"
                one = encode(
                    {
                        **item,
                        "type": MessageType.FAILED.value,
                        "payload": {
                            "error": {"type": "InvalidInput", "message": reason},
                            "reason": reason,
                            "retryable": False,
                        },
                    }
                )
            await self.client.publish(self._events_subject, one)
