"""What agents report, as the control plane receives it from an org's EVENTS.

Who spoke is never read from the payload. The org is the account the control plane read the
stream from (its own connection in that account, see :mod:`corral.bus.links`); a subject
naming another org is refused. The agent is the subject's token: an agent's user may only
publish its own ``org.<org>.agents.<agent>.status|events``, so the server has vouched for it.
``platform.agents.status`` carries no agent token: only its org is vouched for (it is named
``platform.agents.status.<org>`` once read) and ``agent_id`` is the payload's claim.

Statuses are small: one over :data:`STATUS_MAX_BYTES` is dropped (and counted), never decoded.
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

__all__ = ["STATUS_MAX_BYTES", "BusEvent", "EventKind", "parse_event", "parse_events"]

#: the largest status message the control plane reads (a heartbeat is ~100 bytes)
STATUS_MAX_BYTES = 16 * 1024


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
    subject: str, data: bytes, *, org: str | None = None
) -> tuple[str, str, EventKind, list[StatusMessage | TaskMessage]]:
    """Like :func:`parse_event`, for a message that may carry a batch: on an agent's events
    subject ``{"batch": [TaskMessage, ...]}`` stands for those messages published in order (an
    agent finishing many tasks at once sends one message, not one each).

    ``org``: the account the message was read from; then ``platform.agents.status`` is that
    org's, and a subject naming any other org is refused.

    Raises:
        InvalidInput: as :func:`parse_event`; a batch that is empty, over
            :data:`~corral.domain.wire.EVENTS_BATCH_MAX` or holds anything but task messages;
            a subject of another org than ``org``; a status over :data:`STATUS_MAX_BYTES`.
    """
    if org is not None:
        if subject == claims.PLATFORM_STATUS_PREFIX:
            subject = claims.platform_status_subject(org)
        elif not subject.startswith(f"org.{org}.agents."):
            raise InvalidInput(
                f"{subject!r} read in the account of {org!r}", details={"subject": subject}
            )
    tokens = subject.split(".")
    is_status = tokens[-1] == EventKind.STATUS or tokens[
        :-1
    ] == claims.PLATFORM_STATUS_PREFIX.split(".")
    if is_status and len(data) > STATUS_MAX_BYTES:
        raise InvalidInput(
            f"a status of {len(data)} bytes (at most {STATUS_MAX_BYTES})",
            details={"subject": subject, "bytes": len(data)},
        )
    if len(tokens) == 5 and tokens[0] == "org" and tokens[2] == "agents" and tokens[4] == "events":
        batch = wire.batch_from_wire(messages.decode(data), cap=wire.EVENTS_BATCH_MAX)
        items: list[StatusMessage | TaskMessage] = [TaskMessage.from_wire(m) for m in batch]
        return tokens[1], tokens[3], EventKind.EVENTS, items
    org, agent, kind, message = parse_event(subject, data)
    return org, agent, kind, [message]
