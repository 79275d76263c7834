"""Every org's events, read fairly: one feed per active org, one batch per org per round.
The control plane takes whatever batches are waiting at once (one per org at most), and
records them in one transaction.

Each org keeps what its agents report in its own EVENTS stream (see :mod:`corral.bus.streams`).
While the org has a link (see :mod:`corral.bus.links`), a feed task pulls from the control
plane's durable consumer there, up to ``batch`` messages at a time, and puts them as one
batch in a queue shared by every org. It then waits until the control plane acknowledged
that batch before pulling again. So the queue holds at most one batch per org, in the order
they came: a flooding org gets one batch per round like every other, and its backlog stays in
its own stream, counted against its own quota.

The consumer acknowledges cumulatively and the stream has interest retention: acknowledging a
batch's last message removes the whole batch from the stream; nothing needs trimming.

An earlier version kept every org's events in one EVENTS stream in PLATFORM; on start what is
left there is drained once through the same queue (before any org's own feed reads), then the
stream is deleted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Literal

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from corral.bus.events import BusEvent, EventKind, parse_events
from corral.bus.failures import translate
from corral.bus.links import OrgLink
from corral.bus.streams import EVENTS_ACK_WAIT
from corral.domain import subjects
from corral.domain.errors import CorralError, InvalidInput
from corral.domain.messages import StatusMessage, TaskMessage
from corral.sdk.pulls import Puller

__all__ = ["EventFeeds"]

log = logging.getLogger(__name__)

_MiB = 1024 * 1024
#: the most events :meth:`EventFeeds.batches` hands out at once (many orgs' batches)
MERGED_EVENTS = 4096

#: what a feed saw last: messages, nothing within its wait, or an error
_State = Literal["active", "idle", "failing"]


class _Ack:
    """Acknowledges one message once; the batch's last one also lets its feed pull again."""

    def __init__(self, msg: Msg, *, cumulative: bool, batch: _Batch | None = None) -> None:
        self.msg = msg
        self.cumulative = cumulative
        self._batch = batch
        self._done = False

    @property
    def releases(self) -> bool:
        """Whether this is its batch's last acknowledgement (which lets its feed pull again)."""
        return self._batch is not None

    async def __call__(self) -> None:
        if not self._done:
            self._done = True
            with suppress(nats.errors.Error):  # the link may be gone: it comes again
                await self.msg.ack()
        if self._batch is not None:
            self._batch.released.set()


@dataclass(eq=False)
class _Batch:
    source: str
    events: list[BusEvent] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    yielded_at: float | None = None


class EventFeeds:
    """The shared queue and the feed tasks that fill it.

    Args:
        consumer: the durable consumer's name in every org's EVENTS.
        batch: the most messages one feed pulls at a time (one org's batch).
        wait: how long one pull waits for a first message (an idle org costs one pull per
            ``wait`` seconds while its link is open).
        timeout: the server's answer to a pull, beyond its ``wait``.
    """

    def __init__(self, *, consumer: str, batch: int, wait: float, timeout: float) -> None:
        self.consumer = consumer
        self.batch = batch
        self.wait = wait
        self.timeout = timeout
        self.dropped: Counter[str] = Counter()  # org → malformed or oversized messages
        self._queue: asyncio.Queue[_Batch] = asyncio.Queue()
        self._backlog: dict[str, int] = {}  # source → events stored and not acknowledged
        self._legacy: asyncio.Task[None] | None = None

    # ---- the consumer's side ------------------------------------------------------------

    async def batches(self) -> AsyncIterator[list[BusEvent]]:
        """Batches as the feeds deliver them; runs until cancelled. Each is what the queue
        holds at that moment (waiting for one if it is empty), up to :data:`MERGED_EVENTS`
        events: at most one batch per org, the orgs in the order their batches came, so
        the control plane records many orgs' events in one transaction, still fairly."""
        while True:
            merged = [await self._queue.get()]
            size = len(merged[0].events)
            while size < MERGED_EVENTS and not self._queue.empty():
                merged.append(self._queue.get_nowait())
                size += len(merged[-1].events)
            now = time.monotonic()
            for batch in merged:
                batch.yielded_at = now
            yield [event for batch in merged for event in batch.events]

    def backlog(self) -> int:
        """Events stored in the EVENTS streams of open links (or PLATFORM's old one) that
        the control plane has not acknowledged, as last seen."""
        return sum(self._backlog.values())

    def backlogs(self) -> list[tuple[str, int]]:
        """(source, events last seen waiting) where some were."""
        return [(source, count) for source, count in self._backlog.items() if count > 0]

    def note_backlog(self, org: str, count: int) -> None:
        self._backlog[org] = count

    @staticmethod
    async def acknowledge(events: list[BusEvent]) -> None:
        """Acknowledge a recorded batch: the last message of each org's batch in it where
        the consumer acknowledges cumulatively, else each message once."""
        for event in events:
            ack = event.ack
            if not getattr(ack, "cumulative", False) or getattr(ack, "releases", True):
                await ack()

    # ---- one org's feed -----------------------------------------------------------------

    async def run(
        self,
        link: OrgLink,
        predecessor: asyncio.Task[None] | None,
        *,
        max_payload: int,
        has_streams: Callable[[], bool] = lambda: True,
    ) -> None:
        """Feed ``link``'s org until the link retires or stays idle (it is then retired).
        Failing to read counts as idle while ``has_streams`` says the org has none yet."""
        for before in (self._legacy, predecessor):
            if before is not None:
                await asyncio.wait({before})
        puller = Puller(
            link.nc,
            stream=subjects.EVENTS_STREAM,
            consumer=self.consumer,
            max_bytes=2 * max(max_payload, _MiB),
            timeout=self.timeout,
        )
        await puller.start()
        link.on_reconnect.append(puller.interrupt)  # its long poll may be lost with the server

        def keep_going(state: _State) -> bool:
            if state == "active":
                link.touch()
            elif (state == "idle" or (state == "failing" and not has_streams())) and (
                link.idle_for(time.monotonic()) > link.idle_seconds
            ):
                return False
            return not link.retiring and not link.nc.is_closed

        try:
            await self._pump(link.org, puller, org=link.org, cumulative=True, go=keep_going)
        finally:
            link.on_reconnect.remove(puller.interrupt)
            self._backlog.pop(link.org, None)
            await puller.stop()

    async def _pump(
        self,
        source: str,
        puller: Puller,
        *,
        org: str | None,
        cumulative: bool,
        go: Callable[[_State], bool],
    ) -> None:
        backoff = 0.1
        while True:
            try:
                msgs = await puller.fetch(self.batch, wait=self.wait)
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                if not go("failing"):
                    return
                error = translate(exc, doing=f"reading the events of {source}")
                # 503: no consumer yet (the org's streams are being made) or a server restart
                quiet = isinstance(exc, nats.js.errors.APIError) and exc.code == 503
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "%s; retrying in %.1fs",
                    error.message,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if not msgs:
                self._backlog[source] = 0
                if not go("idle"):
                    return
                continue
            go("active")
            with suppress(Exception):
                self._backlog[source] = len(msgs) + int(msgs[-1].metadata.num_pending or 0)
            batch = await self._batch(source, msgs, org=org, cumulative=cumulative)
            if batch is None:
                continue
            await self._queue.put(batch)
            await self._settled(batch)
            if not go("active"):
                return

    async def _batch(
        self, source: str, msgs: list[Msg], *, org: str | None, cumulative: bool
    ) -> _Batch | None:
        batch = _Batch(source)
        last = len(msgs) - 1
        kept: list[tuple[Msg, str, str, EventKind, list[StatusMessage | TaskMessage]]] = []
        for msg in msgs:
            try:
                got_org, agent, kind, items = parse_events(msg.subject, msg.data, org=org)
            except InvalidInput as exc:
                self.dropped[org or source] += 1
                log.warning("dropping an event of %s on %s: %s", source, msg.subject, exc)
                if not cumulative:
                    with suppress(nats.errors.Error):
                        await msg.term()
                continue
            kept.append((msg, got_org, agent, kind, items))
        if not kept:
            if cumulative:
                await _Ack(msgs[last], cumulative=True)()
            return None
        for n, (msg, got_org, agent, kind, items) in enumerate(kept):
            final = n == len(kept) - 1
            target = msgs[last] if final and cumulative else msg
            ack = _Ack(target, cumulative=cumulative, batch=batch if final else None)
            batch.events.extend(BusEvent(got_org, agent, kind, item, ack) for item in items)
        return batch

    async def _settled(self, batch: _Batch) -> None:
        """Until the control plane acknowledged ``batch``, or held it past the ack wait
        (the server then delivers it again)."""
        while not batch.released.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(batch.released.wait(), timeout=1.0)
            held = batch.yielded_at
            if held is not None and time.monotonic() - held > EVENTS_ACK_WAIT:
                log.warning("a batch of %s was not acknowledged in time", batch.source)
                return

    # ---- what an earlier version left in PLATFORM ---------------------------------------

    def drain_legacy(
        self, puller: Puller, *, cumulative: bool, backlog: int, done: Callable[[], Awaitable[None]]
    ) -> None:
        """Drain PLATFORM's old EVENTS once through the queue, then call ``done`` (which
        deletes it); every org's feed waits for this."""
        self.note_backlog("PLATFORM", backlog)

        async def drain() -> None:
            drained = False

            def go(state: _State) -> bool:
                nonlocal drained
                drained = state == "idle"
                return state == "active"

            try:
                await puller.start()
                await self._pump("PLATFORM", puller, org=None, cumulative=cumulative, go=go)
                if drained:
                    await done()
            except CorralError as exc:
                log.warning("the earlier EVENTS stream was not drained: %s", exc.message)
            finally:
                self._backlog.pop("PLATFORM", None)
                await puller.stop()

        self._legacy = asyncio.create_task(drain(), name="feed-legacy-events")

    async def close(self) -> None:
        if self._legacy is not None and not self._legacy.done():
            self._legacy.cancel()
            with suppress(BaseException):
                await self._legacy
