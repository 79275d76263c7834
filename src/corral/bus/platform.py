"""The bus as the control plane uses it: onboard tenants, prepare agents, deliver tasks, ask
agents to checkpoint, broadcast, consume what agents report, answer vault requests.

One :class:`PlatformBus` holds a SYSTEM connection for pushing account JWTs and a PLATFORM
connection (least privilege: it cannot publish an agent's status) for broadcasts and vault
requests. Everything about one org — delivering into its INBOX, control requests, its streams
and consumers, reading its EVENTS — goes over the control plane's own connection in that org's
account, kept while the org is active (:mod:`corral.bus.links`); the orgs' events are read
fairly, one batch per org per round (:mod:`corral.bus.feeds`). PLATFORM imports nothing, so
nothing here grows with the number of orgs but the links of the active ones.

Every nats-py exception leaves as Corral's error tree; a permission violation the server
reported asynchronously on the PLATFORM connection is raised as :class:`PermissionDenied` by
the next call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection
from contextlib import AsyncExitStack, suppress
from types import TracebackType
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError as Gone

from corral.bus import delivery, streams
from corral.bus.accounts import AgentCredentials, BusAuthority, validate_token
from corral.bus.claims import VAULT_IMPORTED_PREFIX
from corral.bus.events import BusEvent
from corral.bus.failures import ViolationRecorder, open_connection, translating
from corral.bus.feeds import EventFeeds
from corral.bus.ingress import IngressMeter, IngressReading
from corral.bus.links import IDLE_SECONDS, MAX_LINKS, OrgLink, OrgLinks
from corral.bus.objects import ObjectStores
from corral.bus.org_streams import OrgStreams
from corral.bus.resolver import ResolverClient
from corral.bus.vault_requests import Serving, TokenBuckets, VaultHandler, answer
from corral.domain import messages, subjects
from corral.domain.errors import (
    CorralError,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from corral.domain.messages import ControlMessage, TaskMessage
from corral.domain.objects import STREAM as OBJECTS
from corral.domain.plans import BusLimits
from corral.sdk.pulls import Puller

__all__ = ["PlatformBus", "Serving"]

log = logging.getLogger(__name__)


class PlatformBus:
    """The control plane's typed bus. Use as ``async with PlatformBus(url, authority) as bus``.

    Args:
        url: the NATS server (embedded, or ``CORRAL_NATS_URL``).
        authority: keys and account state; its operator must be the one the server trusts.
        events_consumer: the durable consumer on each org's EVENTS (one per control plane
            deployment).
        events_batch: the most messages read from one org at a time.
        events_wait: how long one read of an org's EVENTS waits for a first message.
        replicas: JetStream replicas for streams (1 embedded; 3 on a cluster).
        timeout: seconds for each request to the server.
        max_links / idle_seconds: how many org connections may be open, and how long one
            is kept without use or events (see :mod:`corral.bus.links`).
        vault_rate / vault_burst: vault requests per second (and at once) one org may make.
    """

    def __init__(
        self,
        url: str,
        authority: BusAuthority,
        *,
        events_consumer: str = "control-plane",
        events_batch: int = 256,
        events_wait: float = 5.0,
        replicas: int = 1,
        timeout: float = 5.0,
        max_links: int = MAX_LINKS,
        idle_seconds: float = IDLE_SECONDS,
        vault_rate: float = 50.0,
        vault_burst: int = 100,
    ) -> None:
        self.url = url
        self.authority = authority
        self.timeout = timeout
        self._consumer = validate_token(events_consumer, what="consumer")
        self._replicas = replicas
        self._violations = ViolationRecorder(name="corral-platform")
        self._lock = asyncio.Lock()
        self._stack = AsyncExitStack()
        self._resolver: ResolverClient | None = None
        self._nc: Client | None = None
        self._feeds = EventFeeds(
            consumer=self._consumer, batch=events_batch, wait=events_wait, timeout=timeout
        )
        self._links = OrgLinks(
            url,
            authority,
            feed=self._feed,
            timeout=timeout,
            max_links=max_links,
            idle_seconds=idle_seconds,
        )
        self._vault_buckets = TokenBuckets(rate=vault_rate, burst=vault_burst)
        self.objects = ObjectStores(self._links, replicas=replicas)  # big payloads and results
        self._streams = OrgStreams(
            self._links, self.objects, self._feeds, consumer=self._consumer, replicas=replicas
        )
        self.objects.needed = self._streams.needed
        self._meter = IngressMeter(authority)

    # ---- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> PlatformBus:
        self._stack.push_async_callback(self._links.close)
        self._stack.push_async_callback(self._feeds.close)
        try:
            creds = self.authority.mint_system_creds()
            resolver = ResolverClient(self.url, creds, timeout=self.timeout)
            self._resolver = await self._stack.enter_async_context(resolver)
            await self._push_platform(legacy_events=True)
            self._nc = await open_connection(
                self.url,
                self.authority.mint_platform_creds(),
                name="corral-platform",
                recorder=self._violations,
                timeout=self.timeout,
            )
            self._stack.push_async_callback(self._nc.close)
            with translating("looking for an earlier EVENTS stream", recorder=self._violations):
                await self._drain_legacy_events()
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
        self._nc = self._resolver = None

    @property
    def connection(self) -> Client:
        """The PLATFORM connection, for health and metrics. Violations on it surface as
        :class:`PermissionDenied` on this object's next call."""
        if self._nc is None:
            raise Unavailable("the platform bus is not open")
        return self._nc

    @property
    def links(self) -> OrgLinks:
        """The open connections into org accounts (for metrics and tests)."""
        return self._links

    @property
    def events_dropped(self) -> dict[str, int]:
        """Per org, the messages read from its EVENTS and dropped: malformed, or a status
        over :data:`~corral.bus.events.STATUS_MAX_BYTES`."""
        return dict(self._feeds.dropped)

    def _open(self) -> tuple[Client, ResolverClient]:
        if self._nc is None or self._resolver is None:
            raise Unavailable("the platform bus is not open")
        self._violations.check()
        return self._nc, self._resolver

    async def _push_platform(self, *, legacy_events: bool = False) -> None:
        assert self._resolver is not None
        jwt = self.authority.platform_account_jwt(legacy_events=legacy_events)
        await self._resolver.push(jwt, name="PLATFORM")

    async def _drain_legacy_events(self) -> None:
        """An earlier version's EVENTS in PLATFORM: drained once through the same queue as
        every org's events, then deleted, then PLATFORM loses its JetStream."""
        assert self._nc is not None
        js = self._nc.jetstream(timeout=self.timeout)
        cumulative = await streams.legacy_events(js, self._consumer)
        if cumulative is None:
            await self._push_platform()
            return
        info = await js.consumer_info(subjects.EVENTS_STREAM, self._consumer)
        backlog = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        log.info("draining %d events an earlier version left in PLATFORM", backlog)

        async def done() -> None:
            with translating("deleting the earlier EVENTS stream"):
                await js.delete_stream(subjects.EVENTS_STREAM)
            await self._push_platform()
            log.info("the earlier EVENTS stream is drained and deleted")

        puller = Puller(
            self._nc,
            stream=subjects.EVENTS_STREAM,
            consumer=self._consumer,
            max_bytes=16 * 1024 * 1024,
            timeout=self.timeout,
        )
        self._feeds.drain_legacy(puller, cumulative=cumulative, backlog=backlog, done=done)

    async def _feed(self, link: OrgLink, predecessor: asyncio.Task[None] | None) -> None:
        limits = self.authority.limits(link.org)
        if limits is None:
            return
        await self._feeds.run(
            link,
            predecessor,
            max_payload=limits.max_payload,
            has_streams=lambda: link.org in self._streams,  # else its link may idle out
        )

    # ---- tenants ------------------------------------------------------------------------

    async def ensure_org(self, org: str, limits: BusLimits, *, lazy: bool = False) -> None:
        """Give ``org`` its account (or its new plan's limits), its INBOX, EVENTS and
        OBJECTS.
        Idempotent; the org's events are read from then on (until it stays idle). When the
        streams shrink they are resized before the smaller account is pushed, when they grow
        after the larger one: the server never holds streams the account cannot hold, so a
        change back to the previous plan always fits.

        With ``lazy``, streams are made only when the org first needs them (its first agent,
        its first object; see :mod:`corral.bus.org_streams`); those that exist are resized.

        Raises:
            Conflict: its JetStream reservation does not fit in the server's caps.
            Unavailable: the server did not answer.
        """
        _, resolver = self._open()
        async with self._streams.lock(org):
            old = self.authority.limits(org)
            made = not lazy or (
                old is not None and old != limits and await self._streams.exist(org)
            )
            shrinking = made and streams.shrinks(limits, old)
            if shrinking:
                await self._streams.ensure(org, limits)
            async with self._lock:
                self.authority.admit(org, limits, save=False)  # saved with its JWT, next
                await resolver.push(self.authority.org_account_jwt(org), name=org)
            if made and not shrinking:
                await self._streams.ensure(org, limits)

    async def ensure_streams(self, org: str) -> None:
        """``org``'s streams exist on return: made now, with the limits its account holds,
        if they were not (see :mod:`corral.bus.org_streams`).

        Raises:
            NotFound: the org has no bus account.
            Unavailable: the server did not answer.
        """
        await self._streams.needed(org)

    async def release_events(self, org: str) -> int:
        """At a takeover: events of ``org`` the previous leader received and never
        acknowledged come again at once, not after the ack wait (:func:`streams.release_events`).
        The org's backlog is noted, for :meth:`events_marks`."""
        async with self._links.use(org) as link:
            with translating(f"releasing the events of {org!r}"):
                released = await streams.release_events(link.js, self._consumer)
                _, backlog = await streams.events_mark(link.js, self._consumer)
        self._feeds.note_backlog(org, backlog)
        return released

    async def events_marks(self) -> dict[str, int]:
        """For each org with events not yet recorded: the last one stored now. An org whose
        consumer cannot be read is left out (its events are recorded when it can)."""
        marks: dict[str, int] = {}
        for org, _ in self._feeds.backlogs():
            link = self._links.peek(org)
            if link is None:
                continue
            with suppress(CorralError), translating(f"reading the events of {org!r}"):
                mark, backlog = await streams.events_mark(link.js, self._consumer)
                if backlog:
                    marks[org] = mark
        return marks

    async def events_recorded(self, marks: dict[str, int]) -> bool:
        """Whether every event up to each org's mark was recorded (acknowledged)."""
        for org, mark in marks.items():
            link = self._links.peek(org)
            if link is None:
                continue
            with translating(f"reading the events of {org!r}"):
                if not await streams.events_recorded(link.js, self._consumer, mark):
                    return False
        return True

    async def remove_org(self, org: str) -> None:
        """Delete ``org``'s streams and account, close its connections. Absent or half made
        is fine; a server that does not answer raises Unavailable (the record is kept)."""
        _, resolver = self._open()
        async with self._lock:
            if self.authority.limits(org) is None:
                return
            try:
                async with self._links.use(org) as link:
                    for stream in (subjects.INBOX_STREAM, subjects.EVENTS_STREAM, OBJECTS):
                        with translating(f"deleting {stream} of {org!r}"), suppress(Gone):
                            await link.js.delete_stream(stream)
            except (NotFound, Unauthenticated) as exc:  # never made, or already gone
                log.info("org %s: streams not deleted: %s", org, exc.message)
            await self._links.drop(org)
            account = self.authority.org_account(org)
            await resolver.push(self.authority.org_account_jwt(org, disabled=True), name=org)
            try:
                await resolver.delete(self.authority.delete_request([account]), name=org)
            except CorralError as exc:  # e.g. an external resolver without allow_delete
                log.warning("org %s: account disabled but not deleted: %s", org, exc.message)
            self.authority.forget(org)
            self._streams.forget(org)
            self._feeds.note_backlog(org, 0)

    # ---- agents -------------------------------------------------------------------------

    def mint_agent_creds(self, org: str, agent: str, *, ttl_seconds: int) -> AgentCredentials:
        """Least-privilege, expiring credentials for one agent (see BusAuthority)."""
        return self.authority.mint_agent_creds(org, agent, ttl_seconds=ttl_seconds)

    async def prepare_agent(self, org: str, agent: str) -> None:
        """Create the agent's durable consumer on its org's INBOX. Idempotent. The org's
        events are read from then on (until it stays idle)."""
        validate_token(agent, what="agent")
        await self.ensure_streams(org)  # its first agent makes the org's streams
        async with self._links.use(org) as link:
            with translating(f"creating the inbox consumer of {agent!r} in {org!r}"):
                await streams.ensure_agent_consumer(link.js, org, agent)

    async def revoke_agent(self, org: str, agent: str) -> None:
        """Revoke every credential minted for ``agent``; its live connections are closed."""
        _, resolver = self._open()
        async with self._lock:
            if self.authority.revoke_agent(org, agent):
                await resolver.push(self.authority.org_account_jwt(org), name=org)

    async def remove_agent(self, org: str, agent: str) -> None:
        """Revoke the agent, delete its consumer and drop what is still queued for it."""
        await self.revoke_agent(org, agent)
        async with self._links.use(org) as link:
            with translating(f"deleting the inbox consumer of {agent!r} in {org!r}"):
                await streams.remove_agent_consumer(link.js, org, agent)

    async def ingress(self) -> IngressReading:
        """What each agent among the server's busiest publishers sent since the previous call
        (see :mod:`corral.bus.ingress`). Raises: Unavailable: the server did not answer."""
        _, resolver = self._open()

        async def ask(subject: str, body: bytes) -> dict[str, Any]:
            return await resolver.ask(subject, body, doing="reading the server's connections")

        return await self._meter.read(ask)

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
        return await delivery.deliver_many(
            self._links, items, batching=batching, timeout=self.timeout
        )

    async def control(
        self, org: str, agent: str, message: ControlMessage, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send ``message`` to the agent's control subject and return its JSON reply.

        Raises:
            Unavailable: the agent is not listening or did not answer within ``timeout``.
            InvalidInput: the reply is not a JSON object.
        """
        self._open()
        subject = subjects.agent_control(org, validate_token(agent, what="agent"))
        doing = f"sending {message.kind.value} to {agent!r} of {org!r}"
        async with self._links.use(org) as link:
            with translating(doing):
                reply = await link.nc.request(
                    subject, messages.encode(message.to_wire()), timeout=timeout or self.timeout
                )
        return messages.decode(reply.data)

    async def broadcast(self, topic: str, payload: dict[str, Any]) -> None:
        """Publish ``payload`` to ``platform.broadcast.<topic>`` for every org's agents."""
        nc, _ = self._open()
        for token in topic.split("."):
            validate_token(token, what="topic")
        with translating(f"broadcasting {topic!r}", recorder=self._violations):
            await nc.publish(subjects.broadcast(topic), messages.encode(payload))

    async def events(self, *, batch: int = 64, wait: float = 1.0) -> AsyncIterator[BusEvent]:
        """Every event agents reported, durably, oldest first per org; runs until cancelled."""
        async for events in self.event_batches(batch=batch, wait=wait):
            for event in events:
                yield event

    async def event_batches(
        self, *, batch: int = 256, wait: float = 1.0
    ) -> AsyncIterator[list[BusEvent]]:
        """Events agents reported, durably, a batch at a time: at most one batch of each org
        (oldest first within the org, the orgs round-robin), so that a consumer can record
        them in one transaction and then :meth:`acknowledge` them; until then those orgs'
        next batches wait. Runs until cancelled; one iterator at a time.

        The batch size is the bus's ``events_batch`` (``batch`` and ``wait`` are accepted for
        the protocol's sake). Malformed events and oversized statuses are logged, counted in
        :attr:`events_dropped` and acknowledged with their batch. Losing the server only
        pauses the iterator.
        """
        self._open()
        async for events in self._feeds.batches():
            yield events

    async def acknowledge(self, events: list[BusEvent]) -> None:
        """Acknowledge a recorded batch of events from :meth:`event_batches` (the last
        message of each org's part: its EVENTS then forgets the whole part)."""
        await self._feeds.acknowledge(events)

    async def events_backlog(self) -> int:
        """Events stored that the control plane has not yet acknowledged, in the orgs whose
        events are being read (and in an earlier version's EVENTS still being drained)."""
        self._open()
        total = 0
        for org, seen in self._feeds.backlogs():
            link = self._links.peek(org)
            if link is None:
                total += seen
                continue
            try:
                with translating(f"reading the EVENTS consumer of {org!r}"):
                    info = await link.js.consumer_info(subjects.EVENTS_STREAM, self._consumer)
            except CorralError:
                total += seen
                continue
            count = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            self._feeds.note_backlog(org, count)
            total += count
        return total

    async def serve_vault(self, handler: VaultHandler) -> Serving:
        """Answer ``platform.vault.get`` from every org's agents with ``handler``; it is told
        the org and agent the server vouched for (see :mod:`corral.bus.vault_requests`). Each
        org may ask ``vault_rate`` times a second (``vault_burst`` at once); more is refused
        with :class:`~corral.domain.errors.RateLimited`, so one org cannot starve the rest."""
        nc, _ = self._open()

        async def on_request(msg: Msg) -> None:
            if not msg.reply:
                return
            reply = await answer(
                msg.subject,
                msg.headers,
                msg.data,
                directory=self.authority,
                handler=handler,
                buckets=self._vault_buckets,
            )
            try:
                await msg.respond(messages.encode(reply))
            except nats.errors.Error as exc:
                log.warning("vault reply to %s lost: %s", msg.subject, exc)

        with translating("serving vault requests", recorder=self._violations):
            sub = await nc.subscribe(f"{VAULT_IMPORTED_PREFIX}.*", cb=on_request)
            await nc.flush(timeout=int(max(1, self.timeout)))
        return Serving(sub)
