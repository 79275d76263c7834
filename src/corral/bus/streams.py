"""The JetStream streams and consumers Corral keeps, and how they are made idempotently.

- ``INBOX`` in each org's account: work-queue over ``org.<org>.tasks.*.inbox``, file storage,
  ``max_bytes`` from the plan, discard new (a full inbox refuses a task rather than dropping an
  older one), and a duplicate window so a redelivered ``Nats-Msg-Id`` is stored once. Per agent
  a durable pull consumer filtered to its own inbox subject.
- ``EVENTS`` in PLATFORM: every imported ``org.*.agents.*.status|events`` and
  ``platform.agents.status.<org>``, limits retention with ``max_bytes``, so what agents report
  while the control plane restarts is kept; one durable consumer for the control plane.
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

from corral.bus import claims
from corral.domain import subjects
from corral.domain.agents import MAX_SLOTS
from corral.domain.plans import BusLimits

__all__ = [
    "AGENT_MAX_ACK_PENDING",
    "DUPLICATE_WINDOW",
    "ensure_agent_consumer",
    "ensure_events",
    "ensure_inbox",
    "events_config",
    "events_subjects",
    "inbox_config",
    "remove_agent_consumer",
]

DUPLICATE_WINDOW = 120.0  # seconds
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


def events_subjects() -> list[str]:
    # Explicit kinds, not org.*.agents.>: the control subjects the platform itself requests
    # live under org.<org>.agents too and must never be captured (nor PubAck'ed) here.
    return [
        subjects.agent_status("*", "*"),
        subjects.agent_events("*", "*"),
        claims.platform_status_subject("*"),
    ]


def events_config(max_bytes: int, *, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=events_subjects(),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_bytes=max_bytes,
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
    js: JetStreamContext, *, max_bytes: int, consumer: str, replicas: int = 1
) -> bool:
    """Create EVENTS and the control plane's durable consumer on it (``js`` is PLATFORM's).
    Returns whether the consumer acknowledges cumulatively.

    A new consumer acknowledges cumulatively (``AckPolicy.ALL``): the control plane records a
    batch of events in one transaction and then acknowledges its last message. A consumer made
    by an earlier version (one acknowledgement per message) is kept as it is and acknowledged
    message by message: replacing it would need a delete before the add, and a crash between
    the two would replay the whole stream.
    """
    await _ensure_stream(js, events_config(max_bytes, replicas=replicas))
    try:
        have = await js.consumer_info(subjects.EVENTS_STREAM, consumer)
    except NotFoundError:
        have = None
    if have is not None:
        return bool(have.config.ack_policy == AckPolicy.ALL)
    await js.add_consumer(
        subjects.EVENTS_STREAM,
        ConsumerConfig(
            durable_name=consumer,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30.0,
            max_ack_pending=10_000,
        ),
    )
    return True


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
