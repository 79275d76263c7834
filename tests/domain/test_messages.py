"""The task message carries a W3C trace context when tracing is on, and only then."""

from __future__ import annotations

import pytest

from corral.domain.messages import MessageType, TaskMessage, traceparent

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_task_message_carries_its_traceparent_there_and_back() -> None:
    sent = TaskMessage("task_1", "platform", "agent-a", MessageType.DELEGATE, {}, 1, TRACE)
    assert sent.to_wire()["traceparent"] == TRACE
    assert TaskMessage.from_wire(sent.to_wire()) == sent


def test_without_tracing_the_message_is_as_before() -> None:
    plain = TaskMessage("task_1", "platform", "agent-a", MessageType.DELEGATE, {"x": 1})
    assert "traceparent" not in plain.to_wire()
    assert TaskMessage.from_wire(plain.to_wire()).traceparent is None


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        42,
        {"traceparent": TRACE},
    ],
)
def test_a_malformed_traceparent_is_dropped_not_a_reason_to_refuse_the_task(bad: object) -> None:
    assert traceparent(bad) is None
    wire = {**TaskMessage("task_1", "a", "b", MessageType.DELEGATE).to_wire(), "traceparent": bad}
    assert TaskMessage.from_wire(wire).traceparent is None
