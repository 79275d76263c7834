"""Reading what agents report: who spoke comes from the subject, never from the payload."""

from __future__ import annotations

import pytest

from corral.bus.events import EventKind, parse_event, parse_events
from corral.domain import messages, subjects
from corral.domain.errors import InvalidInput
from corral.domain.messages import MessageType, StatusKind, StatusMessage, TaskMessage
from corral.domain.wire import EVENTS_BATCH_MAX


def _status(agent: str) -> bytes:
    return messages.encode(StatusMessage(agent, StatusKind.WORKING, "t1", 0.5).to_wire())


def test_a_status_names_the_org_and_agent_of_its_subject_whatever_its_payload_claims() -> None:
    org, agent, kind, message = parse_event(subjects.agent_status("a", "a1"), _status("b1"))
    assert (org, agent, kind) == ("a", "a1", EventKind.STATUS)
    assert message == StatusMessage("a1", StatusKind.WORKING, "t1", 0.5)


def test_events_carry_task_messages() -> None:
    done = TaskMessage("t1", "a1", "platform", MessageType.COMPLETE, {"ok": True})
    subject = subjects.agent_events("a", "a1")
    assert parse_event(subject, messages.encode(done.to_wire())) == (
        "a",
        "a1",
        EventKind.EVENTS,
        done,
    )


def test_the_platform_wide_status_is_vouched_for_its_org_only() -> None:
    org, agent, kind, _ = parse_event("platform.agents.status.a", _status("a7"))
    assert (org, agent, kind) == ("a", "a7", EventKind.PLATFORM_STATUS)


@pytest.mark.parametrize(
    ("subject", "data"),
    [
        ("org.a.agents.a1.control", b"{}"),
        ("org.a.agents.a1.status", b"not json"),
        ("org.a.agents.a1.status", b'{"agentId": "a1", "status": "dancing"}'),
        ("org.a.agents.a1.events", b'{"taskId": "t"}'),
        ("something.else", b"{}"),
    ],
)
def test_anything_else_is_invalid_input(subject: str, data: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_event(subject, data)


def test_a_batch_stands_for_its_task_messages_in_order() -> None:
    subject = subjects.agent_events("a", "a1")
    done = [
        TaskMessage(f"t{i}", "a1", "platform", MessageType.COMPLETE, {"n": i}) for i in range(3)
    ]
    data = messages.encode({"batch": [m.to_wire() for m in done]})
    assert parse_events(subject, data) == ("a", "a1", EventKind.EVENTS, done)
    single = messages.encode(done[0].to_wire())
    assert parse_events(subject, single) == ("a", "a1", EventKind.EVENTS, [done[0]])
    status = parse_events(subjects.agent_status("a", "a1"), _status("a1"))
    assert status[3] == [StatusMessage("a1", StatusKind.WORKING, "t1", 0.5)]


@pytest.mark.parametrize(
    "data",
    [
        b'{"batch": []}',
        b'{"batch": {"taskId": "t"}}',
        b'{"batch": [1, 2]}',
        b'{"batch": [{"taskId": "t"}]}',
        messages.encode({"batch": [{}] * (EVENTS_BATCH_MAX + 1)}),
    ],
)
def test_a_malformed_batch_is_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_events(subjects.agent_events("a", "a1"), data)


def test_a_batch_on_a_status_subject_is_not_a_batch() -> None:
    with pytest.raises(InvalidInput):
        parse_events(subjects.agent_status("a", "a1"), b'{"batch": [{"taskId": "t"}]}')
