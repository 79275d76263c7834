"""The bus as the control plane uses it: onboard tenants, prepare agents, deliver tasks, ask
agents to checkpoint, broadcast, consume what agents report, answer vault requests.

One :class:`PlatformBus` holds a PLATFORM connection (least privilege: it cannot publish an
agent's status) and a SYSTEM connection for pushing account JWTs. Each org's own JetStream
(its INBOX stream and agents' consumers) is managed through short-lived admin credentials of
that org. Every nats-py exception leaves as Corral's error tree; a permission violation the
server reported asynchronously is raised as :class:`PermissionDenied` by the next call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from types import TracebackType
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext

from corral.bus import streams
from corral.bus.accounts import AgentCredentials, BusAuthority, validate_token
from corral.bus.acks import PipelinedPublisher
from corral.bus.claims import VAULT_IMPORTED_PREFIX
from corral.bus.events import BusEvent, parse_events
from corral.bus.failures import ViolationRecorder, open_connection, translate, translating
from corral.bus.resolver import ResolverClient
from corral.bus.vault_requests import VaultHandler, answer
from corral.domain import messages, subjects, wire
from corral.domain.errors import (
    CorralError,
    InvalidInput,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from corral.domain.messages import ControlMessage, TaskMessage
from corral.domain.plans import BusLimits

__all__ = ["TRIM_INTERVAL", "PlatformBus", "Serving"]

#: how often, at most, EVENTS is trimmed of what the control plane acknowledged (seconds)
TRIM_INTERVAL = 2.0

log = logging.getLogger(__name__)

#: An org's admin connection is reused this long, then replaced before its credentials expire.
ADMIN_REUSE_SECONDS = 240.0
ADMIN_TTL_SECONDS = 300
MAX_ADMIN_CONNECTIONS = 128


class Serving:
    """A running responder; :meth:`close` stops it (so does leaving the PlatformBus)."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    async def close(self) -> None:
        with suppress(nats.errors.Error):  # the connection may already be gone
            await self._subscription.unsubscribe()


def _groups(
    items: list[tuple[str, str, TaskMessage]], batching: Collection[str]
) -> list[tuple[str, str, list[int]]]:
    """Positions of ``items`` by the message they travel in: an agent in ``batching`` gets its
    tasks together (in their order), any other agent one message per task."""
    groups: dict[tuple[str, str], list[int]] = {}
    alone: list[tuple[str, str, list[int]]] = []
    for i, (org, agent, _) in enumerate(items):
        if agent in batching:
            groups.setdefault((org, agent), []).append(i)
        else:
            alone.append((org, agent, [i]))
    return [(org, agent, idx) for (org, agent), idx in groups.items()] + alone


def _chunks(encoded: list[tuple[int, bytes]], *, limit: int) -> list[list[tuple[int, bytes]]]:
    """Consecutive runs of at most :data:`~corral.domain.wire.INBOX_BATCH_MAX` messages that
    fit in ``limit`` bytes together (with the batch's own wrapping); a message too big to share
    goes alone."""
    chunks: list[list[tuple[int, bytes]]] = []
    current: list[tuple[int, bytes]] = []
    size = wire.BATCH_OVERHEAD
    for item in encoded:
        extra = len(item[1]) + 1
        if current and (len(current) >= wire.INBOX_BATCH_MAX or size + extra > limit):
            chunks.append(current)
            current, size = [], wire.BATCH_OVERHEAD
        current.append(item)
        size += extra
    if current:
        chunks.append(current)
    return chunks


def _ack_once(msg: Msg) -> Callable[[], Awaitable[None]]:
    """The message's acknowledgement, safe to call once per event it carried."""
    done = False

    async def ack() -> None:
        nonlocal done
        if not done:
            done = True
            await msg.ack()

    return ack


class PlatformBus:
    """The control plane's typed bus. Use as ``async with PlatformBus(url, authority) as bus``.

    Args:
        url: the NATS server (embedded, or ``CORRAL_NATS_URL``).
        authority: keys and account state; its operator must be the one the server trusts.
        events_consumer: the durable consumer on EVENTS (one per control plane deployment).
        events_max_bytes: EVENTS size; defaults to PLATFORM's whole storage reservation.
        replicas: JetStream replicas for streams (1 embedded; 3 on a cluster).
        timeout: seconds for each request to the server.
    """

    def __init__(
        self,
        url: str,
        authority: BusAuthority,
        *,
        events_consumer: str = "control-plane",
        events_max_bytes: int | None = None,
        replicas: int = 1,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.authority = authority
        self.timeout = timeout
        self._consumer = validate_token(events_consumer, what="consumer")
        self._events_max_bytes = events_max_bytes or authority.platform_storage
        self._replicas = replicas
        self._violations = ViolationRecorder(name="corral-platform")
        self._lock = asyncio.Lock()
        self._stack = AsyncExitStack()
        self._resolver: ResolverClient | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._platform_stale = True
        self._pipeline: PipelinedPublisher | None = None
        self._ack_all = True  # the EVENTS consumer acknowledges cumulatively (see streams)
        self._trimmed_below = 0  # EVENTS holds nothing below this stream sequence
        self._next_trim = 0.0  # monotonic time of the next trim
        # org → (admin connection, when it was opened): see _org_js
        self._admins: OrderedDict[str, tuple[Client, float]] = OrderedDict()
        self._admin_locks: dict[str, asyncio.Lock] = {}

    # ---- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> PlatformBus:
        self._stack.push_async_callback(self._drop_admins)
        try:
            creds = self.authority.mint_system_creds()
            resolver = ResolverClient(self.url, creds, timeout=self.timeout)
            self._resolver = await self._stack.enter_async_context(resolver)
            await self._push_platform()
            self._nc = await open_connection(
                self.url,
                self.authority.mint_platform_creds(),
                name="corral-platform",
                recorder=self._violations,
                timeout=self.timeout,
            )
            self._stack.push_async_callback(self._nc.close)
            self._js = self._nc.jetstream(timeout=self.timeout)
            self._pipeline = PipelinedPublisher(self._nc)
            self._stack.push_async_callback(self._pipeline.close)
            with translating("creating the EVENTS stream", recorder=self._violations):
                self._ack_all = await streams.ensure_events(
                    self._js,
                    max_bytes=self._events_max_bytes,
                    consumer=self._consumer,
                    replicas=self._replicas,
                )
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        self._nc = self._js = self._resolver = None

    @property
    def connection(self) -> Client:
        """The PLATFORM connection, for health and metrics. Violations on it surface as
        :class:`PermissionDenied` on this object's next call."""
        if self._nc is None:
            raise Unavailable("the platform bus is not open")
        return self._nc

    def _open(self) -> tuple[Client, JetStreamContext, ResolverClient]:
        if self._nc is None or self._js is None or self._resolver is None:
            raise Unavailable("the platform bus is not open")
        self._violations.check()
        return self._nc, self._js, self._resolver

    async def _push_platform(self, *, excluding: str | None = None) -> None:
        assert self._resolver is not None
        await self._resolver.push(
            self.authority.platform_account_jwt(excluding=excluding), name="PLATFORM"
        )
        self._platform_stale = False

    # ---- tenants ------------------------------------------------------------------------

    async def ensure_org(self, org: str, limits: BusLimits) -> None:
        """Give ``org`` its account (or its new plan's limits) and its INBOX. Idempotent.

        Raises:
            Conflict: its JetStream reservation does not fit in the server's caps.
            Unavailable: the server did not answer.
        """
        _, _, resolver = self._open()
        async with self._lock:
            is_new = self.authority.limits(org) is None
            self.authority.admit(org, limits)
            await resolver.push(self.authority.org_account_jwt(org), name=org)
            if is_new or self._platform_stale:
                self._platform_stale = True
                await self._push_platform()
        async with self._org_js(org) as js:
            with translating(f"creating the INBOX of {org!r}"):
                await streams.ensure_inbox(js, org, limits, replicas=self._replicas)

    async def remove_org(self, org: str) -> None:
        """Delete ``org``'s INBOX and account and close its connections. Absent is fine."""
        _, _, resolver = self._open()
        async with self._lock:
            if self.authority.limits(org) is None:
                return
            try:
                async with self._org_js(org) as js:
                    with translating(f"deleting the INBOX of {org!r}"):
                        await js.delete_stream(subjects.INBOX_STREAM)
            except (NotFound, Unauthenticated, Unavailable) as exc:
                log.warning("org %s: INBOX not deleted: %s", org, exc.message)
            self._platform_stale = True
            await self._push_platform(excluding=org)
            account = self.authority.org_account(org)
            await resolver.push(self.authority.org_account_jwt(org, disabled=True), name=org)
            try:
                await resolver.delete(self.authority.delete_request([account]), name=org)
            except CorralError as exc:  # e.g. an external resolver without allow_delete
                log.warning("org %s: account disabled but not deleted: %s", org, exc.message)
            self.authority.forget(org)
            await self._drop_admin(org)

    @asynccontextmanager
    async def _org_js(self, org: str) -> AsyncIterator[JetStreamContext]:
        """The org's JetStream, through an admin connection of that org that is kept (and
        shared by concurrent callers) for a while rather than opened per call: provisioning
        an agent no longer costs a connection handshake."""
        self._open()
        nc = await self._org_admin(org)
        yield nc.jetstream(timeout=self.timeout)

    async def _org_admin(self, org: str) -> Client:
        now = time.monotonic()
        kept = self._admins.get(org)
        if kept is not None and kept[0].is_connected and now - kept[1] < ADMIN_REUSE_SECONDS:
            self._admins.move_to_end(org)
            return kept[0]
        lock = self._admin_locks.setdefault(org, asyncio.Lock())
        async with lock:
            kept = self._admins.get(org)
            if kept is not None and kept[0].is_connected and now - kept[1] < ADMIN_REUSE_SECONDS:
                return kept[0]
            await self._drop_admin(org)
            creds = self.authority.mint_org_admin_creds(org, ttl_seconds=ADMIN_TTL_SECONDS)
            nc = await open_connection(
                self.url,
                creds,
                name=f"{org}-platform-admin",
                recorder=ViolationRecorder(name=f"{org}-platform-admin"),
                timeout=self.timeout,
                reconnect=False,
            )
            self._admins[org] = (nc, time.monotonic())
            while len(self._admins) > MAX_ADMIN_CONNECTIONS:  # the least recently used goes
                oldest = next(iter(self._admins))
                await self._drop_admin(oldest)
            return nc

    async def _drop_admin(self, org: str) -> None:
        kept = self._admins.pop(org, None)
        if kept is not None:
            with suppress(Exception):
                await kept[0].close()

    async def _drop_admins(self) -> None:
        for org in list(self._admins):
            await self._drop_admin(org)

    # ---- agents -------------------------------------------------------------------------

    def mint_agent_creds(self, org: str, agent: str, *, ttl_seconds: int) -> AgentCredentials:
        """Least-privilege, expiring credentials for one agent (see BusAuthority)."""
        return self.authority.mint_agent_creds(org, agent, ttl_seconds=ttl_seconds)

    async def prepare_agent(self, org: str, agent: str) -> None:
        """Create the agent's durable consumer on its org's INBOX. Idempotent."""
        validate_token(agent, what="agent")
        async with self._org_js(org) as js:
            with translating(f"creating the inbox consumer of {agent!r} in {org!r}"):
                await streams.ensure_agent_consumer(js, org, agent)

    async def revoke_agent(self, org: str, agent: str) -> None:
        """Revoke every credential minted for ``agent``; its live connections are closed."""
        _, _, resolver = self._open()
        async with self._lock:
            if self.authority.revoke_agent(org, agent):
                await resolver.push(self.authority.org_account_jwt(org), name=org)

    async def remove_agent(self, org: str, agent: str) -> None:
        """Revoke the agent, delete its consumer and drop what is still queued for it."""
        await self.revoke_agent(org, agent)
        async with self._org_js(org) as js:
            with translating(f"deleting the inbox consumer of {agent!r} in {org!r}"):
                await streams.remove_agent_consumer(js, org, agent)

    # ---- messages -----------------------------------------------------------------------

    async def deliver(self, org: str, agent: str, task: TaskMessage) -> int:
        """Store ``task`` in the agent's inbox; returns its INBOX sequence once the org's
        JetStream acknowledged it. A redelivery of the same task and attempt is stored once.

        Raises:
            NotFound: the org has no bus account.
            QuotaExceeded: the org's INBOX is full.
            Unavailable: no acknowledgement in time.
        """
        [result] = await self.deliver_many([(org, agent, task)])
        if isinstance(result, CorralError):
            raise result
        return result

    async def deliver_many(
        self,
        items: list[tuple[str, str, TaskMessage]],
        *,
        batching: Collection[str] = (),
    ) -> list[int | CorralError]:
        """Store many ``(org, agent, task)`` at once: every message is published before any
        acknowledgement is awaited, and all are awaited together (one timeout for the lot).

        Tasks for an agent in ``batching`` (it said it reads batches) travel together, as
        ``{"batch": [...]}`` messages of at most :data:`~corral.domain.wire.INBOX_BATCH_MAX`
        tasks within the org's message size; any other task travels alone. Returns, in order,
        each task's INBOX sequence or the error that kept it out; a redelivery of the same tasks
        and attempts is stored once, as with :meth:`deliver`."""
        self._open()
        assert self._pipeline is not None
        out: list[int | CorralError] = [0] * len(items)
        pending: list[tuple[list[int], str, asyncio.Future[dict[str, Any]]]] = []
        for org, agent, indexes in _groups(items, batching):
            limits = self.authority.limits(org)
            if limits is None:
                for i in indexes:
                    out[i] = NotFound(
                        f"organization {org!r} has no bus account", details={"org": org}
                    )
                continue
            try:
                subject = subjects.task_inbox(org, validate_token(agent, what="agent"))
            except CorralError as exc:
                for i in indexes:
                    out[i] = exc
                continue
            encoded = [(i, messages.encode(items[i][2].to_wire())) for i in indexes]
            for chunk in _chunks(encoded, limit=limits.max_payload):
                tasks = [items[i][2] for i, _ in chunk]
                doing = (
                    f"delivering task {tasks[0].task_id} to {agent!r} of {org!r}"
                    if len(tasks) == 1
                    else f"delivering {len(tasks)} tasks to {agent!r} of {org!r}"
                )
                data = wire.join_batch([d for _, d in chunk], cap=wire.INBOX_BATCH_MAX)
                if len(chunk) == 1:
                    msg_id = f"{tasks[0].task_id}.{tasks[0].type.value}.{tasks[0].attempt}"
                else:
                    ids = ";".join(f"{t.task_id}.{t.type.value}.{t.attempt}" for t in tasks)
                    msg_id = "batch." + hashlib.sha256(ids.encode()).hexdigest()[:40]
                try:
                    with translating(doing, recorder=self._violations):
                        future = await self._pipeline.publish(
                            subject,
                            data,
                            headers={
                                "Nats-Msg-Id": msg_id,
                                "Nats-Expected-Stream": subjects.INBOX_STREAM,
                            },
                        )
                except CorralError as exc:
                    for i, _ in chunk:
                        out[i] = exc
                    continue
                pending.append(([i for i, _ in chunk], doing, future))
        if pending:
            await asyncio.wait([f for _, _, f in pending], timeout=self.timeout)
        for indexes, doing, future in pending:
            result: int | CorralError
            if not future.done():
                future.cancel()
                result = Unavailable(f"{doing}: no acknowledgement in time")
            elif future.cancelled():
                result = Unavailable(f"{doing}: cancelled")
            elif (failure := future.exception()) is not None:
                result = translate(failure, doing=doing)
            else:
                result = int(future.result().get("seq", 0))
            for i in indexes:
                out[i] = result
        return out

    async def control(
        self, org: str, agent: str, message: ControlMessage, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send ``message`` to the agent's control subject and return its JSON reply.

        Raises:
            Unavailable: the agent is not listening or did not answer within ``timeout``.
            InvalidInput: the reply is not a JSON object.
        """
        nc, _, _ = self._open()
        subject = subjects.agent_control(org, validate_token(agent, what="agent"))
        doing = f"sending {message.kind.value} to {agent!r} of {org!r}"
        with translating(doing, recorder=self._violations):
            reply = await nc.request(
                subject, messages.encode(message.to_wire()), timeout=timeout or self.timeout
            )
        return messages.decode(reply.data)

    async def broadcast(self, topic: str, payload: dict[str, Any]) -> None:
        """Publish ``payload`` to ``platform.broadcast.<topic>`` for every org's agents."""
        nc, _, _ = self._open()
        for token in topic.split("."):
            validate_token(token, what="topic")
        with translating(f"broadcasting {topic!r}", recorder=self._violations):
            await nc.publish(subjects.broadcast(topic), messages.encode(payload))

    async def events(self, *, batch: int = 64, wait: float = 1.0) -> AsyncIterator[BusEvent]:
        """Every event agents reported, durably, oldest first; runs until cancelled."""
        async for events in self.event_batches(batch=batch, wait=wait):
            for event in events:
                yield event

    async def event_batches(
        self, *, batch: int = 256, wait: float = 1.0
    ) -> AsyncIterator[list[BusEvent]]:
        """Events agents reported, durably, oldest first, as many as are waiting (up to
        ``batch``) at a time, so that a consumer can record them in one transaction and then
        acknowledge them; runs until cancelled.

        Malformed events are logged and terminated (never redelivered). Losing the server
        only pauses the iterator; a permission violation ends it.
        """
        _, js, _ = self._open()
        with translating("subscribing to EVENTS", recorder=self._violations):
            pull = await js.pull_subscribe_bind(
                durable=self._consumer, stream=subjects.EVENTS_STREAM
            )
        backoff = 0.1
        try:
            while True:
                self._violations.check()
                try:
                    batch_msgs: list[Msg] = await pull.fetch(batch, timeout=wait)
                except (nats.errors.TimeoutError, TimeoutError):  # nothing new: poll again
                    continue
                except (nats.errors.Error, OSError) as exc:
                    error = translate(exc, doing="reading EVENTS")
                    if not isinstance(error, Unavailable):
                        raise error from exc
                    log.warning("%s; retrying in %.1fs", error.message, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                events: list[BusEvent] = []
                for msg in batch_msgs:
                    try:
                        org, agent, kind, items = parse_events(msg.subject, msg.data)
                    except InvalidInput as exc:
                        log.warning("dropping a malformed event on %s: %s", msg.subject, exc)
                        await msg.term()
                        continue
                    ack = _ack_once(msg)
                    events.extend(BusEvent(org, agent, kind, item, ack) for item in items)
                if events:
                    yield events
        finally:
            with suppress(nats.errors.Error):
                await pull.unsubscribe()

    async def acknowledge(self, events: list[BusEvent]) -> None:
        """Acknowledge a recorded batch of events from :meth:`event_batches`: its last message
        alone where the consumer acknowledges cumulatively, else each message once."""
        targets = events[-1:] if self._ack_all else events
        for event in targets:
            with suppress(nats.errors.Error):
                await event.ack()
        if time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + TRIM_INTERVAL
            with suppress(CorralError):
                await self.trim_events()

    async def trim_events(self) -> int:
        """Drop from EVENTS everything the control plane has acknowledged; returns the stream
        sequence below which nothing is kept.

        EVENTS keeps messages by limits (so that what agents report while no control plane
        runs is kept), so without this it would only grow until its ``max_bytes`` and then
        refuse every tenant's events. The consumer's acknowledgement floor is the server's
        own record of what has been recorded; nothing above it is touched.
        """
        _, js, _ = self._open()
        with translating("trimming EVENTS", recorder=self._violations):
            info = await js.consumer_info(subjects.EVENTS_STREAM, self._consumer)
            floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
            if floor + 1 > self._trimmed_below:
                await js.purge_stream(subjects.EVENTS_STREAM, seq=floor + 1)
                self._trimmed_below = floor + 1
        return self._trimmed_below

    async def events_backlog(self) -> int:
        """Events stored in EVENTS that the control plane has not yet acknowledged."""
        _, js, _ = self._open()
        with translating("reading the EVENTS consumer", recorder=self._violations):
            info = await js.consumer_info(subjects.EVENTS_STREAM, self._consumer)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def serve_vault(self, handler: VaultHandler) -> Serving:
        """Answer ``platform.vault.get`` from every org's agents with ``handler``; it is told
        the org and agent the server vouched for (see :mod:`corral.bus.vault_requests`)."""
        nc, _, _ = self._open()

        async def on_request(msg: Msg) -> None:
            if not msg.reply:
                return
            reply = await answer(
                msg.subject, msg.headers, msg.data, directory=self.authority, handler=handler
            )
            try:
                await msg.respond(messages.encode(reply))
            except nats.errors.Error as exc:
                log.warning("vault reply to %s lost: %s", msg.subject, exc)

        with translating("serving vault requests", recorder=self._violations):
            sub = await nc.subscribe(f"{VAULT_IMPORTED_PREFIX}.*", cb=on_request)
            await nc.flush(timeout=int(max(1, self.timeout)))
        return Serving(sub)
