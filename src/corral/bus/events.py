"""What agents report, as the control plane receives it from EVENTS.

Who spoke is read from the subject, never from the payload: PLATFORM imported
``org.<org>.agents.>`` from that org's account and nothing else, and an agent's user may only
publish its own ``org.<org>.agents.<agent>.status|events``, so the server has already vouched
for both tokens. ``platform.agents.status`` carries no agent token: only its org is vouched for
(it arrives as ``platform.agents.status.<org>``) and ``agent_id`` is the payload's claim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from corral.bus import claims
from corral.domain import messages, wire
from corral.domain.errors import InvalidInput
from corral.domain.messages import StatusMessage, TaskMessage

__all__ = ["BusEvent", "EventKind", "parse_event", "parse_events"]


class EventKind(StrEnum):
    STATUS = "status"  # org.<org>.agents.<agent>.status: StatusMessage
    EVENTS = "events"  # org.<org>.agents.<agent>.events: TaskMessage (complete, blocked, delegate)
    PLATFORM_STATUS = "platform_status"  # platform.agents.status: StatusMessage, agent unvouched


@dataclass(frozen=True, slots=True)
class BusEvent:
    """One durable event from EVENTS. Call :attr:`ack` once it is recorded; unacked events are
    delivered again (after 30 s, or to the next consumer after a restart)."""

    org: str
    agent_id: str
    kind: EventKind
    message: StatusMessage | TaskMessage
    ack: Callable[[], Awaitable[None]] = dataclasses.field(repr=False, compare=False)

    @property
    def agent_vouched(self) -> bool:
        """Whether the server, not the payload, named the agent."""
        return self.kind is not EventKind.PLATFORM_STATUS


def parse_event(
    subject: str, data: bytes
) -> tuple[str, str, EventKind, StatusMessage | TaskMessage]:
    """(org, agent, kind, message) of one EVENTS message.

    Raises:
        InvalidInput: an unknown subject, or a payload that is not the kind's message.
    """
    tokens = subject.split(".")
    prefix = claims.PLATFORM_STATUS_PREFIX.split(".")
    if len(tokens) == 5 and tokens[0] == "org" and tokens[2] == "agents":
        org, agent, kind = tokens[1], tokens[3], tokens[4]
        if kind == EventKind.STATUS:
            status = StatusMessage.from_wire(messages.decode(data))
            if status.agent_id != agent:  # the subject is the truth
                status = dataclasses.replace(status, agent_id=agent)
            return org, agent, EventKind.STATUS, status
        if kind == EventKind.EVENTS:
            return org, agent, EventKind.EVENTS, TaskMessage.from_wire(messages.decode(data))
    if len(tokens) == len(prefix) + 1 and tokens[:-1] == prefix:
        status = StatusMessage.from_wire(messages.decode(data))
        return tokens[-1], status.agent_id, EventKind.PLATFORM_STATUS, status
    raise InvalidInput(f"not an agent event subject: {subject!r}", details={"subject": subject})


def parse_events(
    subject: str, data: bytes
) -> tuple[str, str, EventKind, list[StatusMessage | TaskMessage]]:
    """Like :func:`parse_event`, for a message that may carry a batch: on an agent's events
    subject ``{"batch": [TaskMessage, ...]}`` stands for those messages published in order (an
    agent finishing many tasks at once sends one message, not one each).

    Raises:
        InvalidInput: as :func:`parse_event`; a batch that is empty, over
            :data:`~corral.domain.wire.EVENTS_BATCH_MAX` or holds anything but task messages.
    """
    tokens = subject.split(".")
    if len(tokens) == 5 and tokens[0] == "org" and tokens[2] == "agents" and tokens[4] == "events":
        batch = wire.batch_from_wire(messages.decode(data), cap=wire.EVENTS_BATCH_MAX)
        items: list[StatusMessage | TaskMessage] = [TaskMessage.from_wire(m) for m in batch]
        return tokens[1], tokens[3], EventKind.EVENTS, items
    org, agent, kind, message = parse_event(subject, data)
    return org, agent, kind, [message]
