"""The JetStream streams and consumers Corral keeps, and how they are made idempotently.

- ``INBOX`` in each org's account: work-queue over ``org.<org>.tasks.*.inbox``, file storage,
  ``max_bytes`` from the plan, discard new (a full inbox refuses a task rather than dropping an
  older one), and a duplicate window so a redelivered ``Nats-Msg-Id`` is stored once. Per agent
  a durable pull consumer filtered to its own inbox subject.
- ``EVENTS`` in each org's account too: its agents' ``org.<org>.agents.*.status|events`` and
  the org-local ``platform.agents.status``, file storage, ``max_bytes`` from the plan, discard
  new (a full stream refuses the flooder's next report, with an error the agent sees, instead
  of dropping what is already kept) and ``max_msg_size`` at the org's payload limit. Interest
  retention with one durable pull consumer for the control plane that acknowledges
  cumulatively: a message is removed once that consumer acknowledged it, so the stream holds
  exactly the backlog and needs no trimming; what agents report while no control plane runs
  is kept (the consumer exists from the stream's first day).

Earlier versions kept one ``EVENTS`` in PLATFORM for every org; :func:`legacy_events` finds
it so that what is left can be drained once and the stream deleted.
"""

from __future__ import annotations

import contextlib

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from corral.domain import subjects
from corral.domain.agents import MAX_SLOTS
from corral.domain.plans import BusLimits

__all__ = [
    "AGENT_MAX_ACK_PENDING",
    "DUPLICATE_WINDOW",
    "EVENTS_ACK_WAIT",
    "ensure_agent_consumer",
    "ensure_events",
    "ensure_inbox",
    "events_config",
    "events_mark",
    "events_recorded",
    "events_subjects",
    "inbox_config",
    "legacy_events",
    "release_events",
    "remove_agent_consumer",
    "shrinks",
]

DUPLICATE_WINDOW = 120.0  # seconds
#: seconds before an event the control plane received but did not acknowledge comes again
EVENTS_ACK_WAIT = 30.0
#: inbox messages an agent may hold unacknowledged. The SDK acknowledges each on receipt and
#: fetches at most 64 at a time; a fetch of more than this waits out its whole timeout, so it
#: must stay above any agent's fetch size (an agent runs up to MAX_SLOTS tasks at once)
AGENT_MAX_ACK_PENDING = MAX_SLOTS


def inbox_config(org: str, limits: BusLimits, *, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.INBOX_STREAM,
        subjects=[subjects.org_inboxes(org)],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_bytes=limits.inbox_max_bytes,
        max_msg_size=limits.max_payload,
        duplicate_window=DUPLICATE_WINDOW,
        num_replicas=replicas,
    )


def events_subjects(org: str) -> list[str]:
    # Explicit kinds, not org.<org>.agents.>: the control subjects the platform itself
    # requests live under org.<org>.agents too and must never be captured (nor PubAck'ed).
    return [
        subjects.agent_status(org, "*"),
        subjects.agent_events(org, "*"),
        subjects.PLATFORM_STATUS,
    ]


def events_config(org: str, limits: BusLimits, *, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=events_subjects(org),
        retention=RetentionPolicy.INTEREST,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_bytes=limits.events_max_bytes,
        max_msg_size=limits.max_payload,
        duplicate_window=DUPLICATE_WINDOW,
        num_replicas=replicas,
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        current = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    have = current.config
    if (have.subjects, have.max_bytes, have.max_msg_size) != (
        config.subjects,
        config.max_bytes,
        config.max_msg_size,
    ):
        await js.update_stream(config)


async def ensure_inbox(
    js: JetStreamContext, org: str, limits: BusLimits, *, replicas: int = 1
) -> None:
    """Create the org's INBOX, or bring its size to the plan's (``js`` is the org's)."""
    await _ensure_stream(js, inbox_config(org, limits, replicas=replicas))


async def ensure_events(
    js: JetStreamContext, org: str, limits: BusLimits, *, consumer: str, replicas: int = 1
) -> int:
    """Create the org's EVENTS and the control plane's durable consumer on it (``js`` is the
    org's), or bring the stream to the plan's size. Returns the consumer's backlog: events
    stored that the control plane has not acknowledged."""
    await _ensure_stream(js, events_config(org, limits, replicas=replicas))
    try:
        have = await js.consumer_info(subjects.EVENTS_STREAM, consumer)
    except NotFoundError:
        have = await js.add_consumer(
            subjects.EVENTS_STREAM,
            ConsumerConfig(
                durable_name=consumer,
                ack_policy=AckPolicy.ALL,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=EVENTS_ACK_WAIT,
                max_ack_pending=10_000,
            ),
        )
    return int(have.num_pending or 0) + int(have.num_ack_pending or 0)


async def release_events(js: JetStreamContext, consumer: str) -> int:
    """Deliver again, at once, the events a control plane that is gone received and never
    acknowledged (``js`` is the org's): the server would hold them until the ack wait ran out.
    The durable consumer is made again from its acknowledgement floor on, so every event after
    it comes next (recording an event twice changes nothing). EVENTS keeps a message only while
    a consumer is interested in it, so a bridge consumer holds that interest meanwhile. How
    many events were released."""
    bridge = f"{consumer}-bridge"
    try:
        have = await js.consumer_info(subjects.EVENTS_STREAM, consumer)
    except NotFoundError:
        have = None
    if have is None:  # a release was interrupted between deleting and making it again
        try:
            kept = await js.consumer_info(subjects.EVENTS_STREAM, bridge)
        except NotFoundError:
            return 0  # none yet: ensure_events makes it
        await js.add_consumer(
            subjects.EVENTS_STREAM, _events_from(consumer, kept.config.opt_start_seq or 1)
        )
        await js.delete_consumer(subjects.EVENTS_STREAM, bridge)
        return 0
    held = int(have.num_ack_pending or 0)
    if not held:
        return 0
    start = int(have.ack_floor.stream_seq if have.ack_floor else 0) + 1
    with contextlib.suppress(NotFoundError):  # what an interrupted release left
        await js.delete_consumer(subjects.EVENTS_STREAM, bridge)
    await js.add_consumer(subjects.EVENTS_STREAM, _events_from(bridge, start))
    await js.delete_consumer(subjects.EVENTS_STREAM, consumer)
    await js.add_consumer(subjects.EVENTS_STREAM, _events_from(consumer, start))
    await js.delete_consumer(subjects.EVENTS_STREAM, bridge)
    return held


def _events_from(name: str, start: int) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=name,
        ack_policy=AckPolicy.ALL,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_wait=EVENTS_ACK_WAIT,
        max_ack_pending=10_000,
    )


async def events_mark(js: JetStreamContext, consumer: str) -> tuple[int, int]:
    """The last event stored in the org's EVENTS now (its sequence), and how many the
    ``consumer`` has not acknowledged (``js`` is the org's)."""
    info = await js.consumer_info(subjects.EVENTS_STREAM, consumer)
    backlog = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    if not backlog:
        return 0, 0
    stream = await js.stream_info(subjects.EVENTS_STREAM)
    return int(stream.state.last_seq), backlog


async def events_recorded(js: JetStreamContext, consumer: str, mark: int) -> bool:
    """Whether the ``consumer`` acknowledged every event up to ``mark``."""
    info = await js.consumer_info(subjects.EVENTS_STREAM, consumer)
    floor = int(info.ack_floor.stream_seq if info.ack_floor else 0)
    return floor >= mark or not (int(info.num_pending or 0) + int(info.num_ack_pending or 0))


async def legacy_events(js: JetStreamContext, consumer: str) -> bool | None:
    """Whether PLATFORM still holds an earlier version's EVENTS (``js`` is PLATFORM's): None
    if not, else whether its ``consumer`` acknowledges cumulatively (created if missing, so
    that its whole content is drained)."""
    try:
        await js.stream_info(subjects.EVENTS_STREAM)
    except NotFoundError:
        return None
    try:
        have = await js.consumer_info(subjects.EVENTS_STREAM, consumer)
    except NotFoundError:
        have = await js.add_consumer(
            subjects.EVENTS_STREAM,
            ConsumerConfig(
                durable_name=consumer,
                ack_policy=AckPolicy.ALL,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=EVENTS_ACK_WAIT,
            ),
        )
    return bool(have.config.ack_policy == AckPolicy.ALL)


async def ensure_agent_consumer(js: JetStreamContext, org: str, agent: str) -> None:
    """The agent's durable pull consumer on INBOX, filtered to its own inbox subject."""
    await js.add_consumer(
        subjects.INBOX_STREAM,
        ConsumerConfig(
            durable_name=subjects.inbox_consumer(agent),
            filter_subject=subjects.task_inbox(org, agent),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=60.0,
            max_ack_pending=AGENT_MAX_ACK_PENDING,
        ),
    )


async def remove_agent_consumer(js: JetStreamContext, org: str, agent: str) -> None:
    """Delete the agent's consumer and whatever is still queued for it; absent is fine."""
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(subjects.INBOX_STREAM, subjects.inbox_consumer(agent))
    with contextlib.suppress(NotFoundError):
        await js.purge_stream(subjects.INBOX_STREAM, subject=subjects.task_inbox(org, agent))


def shrinks(new: BusLimits, old: BusLimits | None) -> bool:
    """Whether moving from ``old`` to ``new`` makes a stream (or the storage) smaller."""
    return old is not None and (
        new.inbox_max_bytes < old.inbox_max_bytes
        or new.events_max_bytes < old.events_max_bytes
        or new.jetstream_storage < old.jetstream_storage
    )
