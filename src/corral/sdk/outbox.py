"""What an agent tells the platform: its statuses, and task events batched per loop turn.

Both are JetStream publishes into the org's own EVENTS stream, which has a size limit and
refuses what does not fit: the server's acknowledgement says whether a report was kept.

Statuses (ready, accepted, working, idle, heartbeat, ...) leave as they happen, pipelined: the
acknowledgement is not awaited, but a refusal (e.g. the stream is full) is logged. Task events
(results and delegation requests) queued in one turn of the event loop leave as one message,
``{"batch": [...]}`` when there are several, in order, and each message's acknowledgement is
awaited: an agent finishing many tasks at once costs the platform one message, not one each.
While the connection lives nothing queued is dropped: a publish that is refused or not
acknowledged is retried, in order, with backoff, and the refusal logged. What an agent that
dies loses is recovered by the platform (the agent is lost, its work retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from corral.domain import subjects, wire
from corral.domain.messages import MessageType, StatusKind, StatusMessage, TaskMessage, encode

__all__ = ["ACK_TIMEOUT", "EVENTS_PER_MESSAGE", "Outbox", "Refused"]

log = logging.getLogger("corral.sdk")

#: The most task messages the SDK puts in one events message, well under what the platform
#: takes (:data:`~corral.domain.wire.EVENTS_BATCH_MAX`); a longer queue leaves in several.
EVENTS_PER_MESSAGE = 256
assert EVENTS_PER_MESSAGE <= wire.EVENTS_BATCH_MAX
#: the largest events message that carries several events: within every plan's payload limit
#: (the server announces its own limit, not the org's); a larger event travels alone
BATCH_MAX_BYTES = 256 * 1024
#: seconds to wait for the stream's acknowledgement of an events message
ACK_TIMEOUT = 5.0
_LOG_EVERY = 10.0  # seconds between two logs of refused statuses


class Refused(Exception):
    """The platform's stream did not keep a report (e.g. it is full)."""


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
        self._acks: Subscription | None = None
        self._ack_prefix = ""
        self._ack_client: Client | None = None
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self.refused_statuses = 0  # statuses the stream did not keep
        self._logged_at = 0.0

    async def _reply_to(self, *, wait: bool) -> tuple[str, asyncio.Future[None] | None]:
        """A reply subject for one JetStream publish (and a future of its acknowledgement)."""
        client = self.client
        assert client is not None
        if self._acks is None or self._ack_client is not client:
            self._ack_client = client
            self._ack_prefix = client.new_inbox()  # under the agent's own inbox prefix
            self._acks = await client.subscribe(f"{self._ack_prefix}.*", cb=self._on_ack)
        token = str(next(self._ids))
        if not wait:
            return f"{self._ack_prefix}.s{token}", None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        future.add_done_callback(lambda _: self._waiting.pop(token, None))
        return f"{self._ack_prefix}.{token}", future

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        refusal = _refusal(msg)
        future = self._waiting.get(token)
        if future is not None and not future.done():
            if refusal is None:
                future.set_result(None)
            else:
                future.set_exception(Refused(refusal))
        elif refusal is not None:
            self.refused_statuses += 1
            now = time.monotonic()
            if now - self._logged_at > _LOG_EVERY:
                self._logged_at = now
                log.warning(
                    "the platform did not keep %d status(es) so far: %s",
                    self.refused_statuses,
                    refusal,
                )

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
        reply, _ = await self._reply_to(wait=False)
        # no flush per message: the client sends its buffer at once, in order
        await self.client.publish(self._status_subject, encode(msg.to_wire()), reply=reply)

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
            except Exception as exc:  # e.g. the stream is full, or a long reconnect
                log.warning(
                    "the platform did not keep %d events (%s); retrying in %.2fs",
                    len(batch),
                    str(exc) or type(exc).__name__,
                    backoff,
                )
                self._queue = batch + self._queue  # nothing is dropped, order is kept
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05

    async def _publish(self, batch: list[dict[str, Any]]) -> None:
        assert self.client is not None
        limit = min(self.client.max_payload or self._max_payload, self._max_payload)
        data = encode(wire.batch_to_wire(batch, cap=EVENTS_PER_MESSAGE))
        if len(data) <= limit and (len(data) <= BATCH_MAX_BYTES or len(batch) == 1):
            await self._publish_event(data)
            return
        for item in batch:  # too big together: one at a time, as large as the server takes
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
            await self._publish_event(one)

    async def _publish_event(self, data: bytes) -> None:
        """Publish one events message and wait for the stream to keep it.

        Raises:
            Refused: the stream refused it (the server's reason in the message).
            TimeoutError: no acknowledgement within :data:`ACK_TIMEOUT`.
        """
        assert self.client is not None
        reply, future = await self._reply_to(wait=True)
        assert future is not None
        try:
            await self.client.publish(self._events_subject, data, reply=reply)
            await asyncio.wait_for(future, ACK_TIMEOUT)
        finally:
            future.cancel()


def _refusal(msg: Msg) -> str | None:
    """None if ``msg`` acknowledges a publish, else why it was not kept."""
    status = msg.headers.get("Status") if msg.headers else None
    if status == "503":
        return "no stream keeps this subject"
    try:
        reply = orjson.loads(msg.data)
    except orjson.JSONDecodeError:
        return "a malformed acknowledgement"
    error = reply.get("error") if isinstance(reply, dict) else None
    if isinstance(error, dict):
        return f"{error.get('description', 'refused')} (code {error.get('err_code')})"
    return None
