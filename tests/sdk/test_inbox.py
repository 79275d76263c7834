"""What the SDK reads from its inbox: one task message, or a batch of them in order."""

from __future__ import annotations

import pytest

from corral.domain.errors import InvalidInput
from corral.domain.messages import MessageType, TaskMessage
from corral.domain.wire import INBOX_BATCH_MAX
from corral.sdk.agent import inbox_messages


def _task(i: int) -> TaskMessage:
    return TaskMessage(f"task_{i:04x}", "platform", "agent-a", MessageType.DELEGATE, {"n": i})


def test_a_single_message_and_a_batch_read_alike() -> None:
    assert inbox_messages(_task(1).to_wire()) == [_task(1)]
    batch = {"batch": [_task(i).to_wire() for i in range(3)]}
    assert inbox_messages(batch) == [_task(0), _task(1), _task(2)]


@pytest.mark.parametrize(
    "obj",
    [{"batch": []}, {"batch": "x"}, {"batch": [1]}, {"batch": [{"taskId": "t"}]}, {"x": 1}],
)
def test_a_malformed_inbox_message_is_refused(obj: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        inbox_messages(obj)


def test_an_inbox_batch_over_its_cap_is_refused() -> None:
    over = {"batch": [_task(i).to_wire() for i in range(INBOX_BATCH_MAX + 1)]}
    with pytest.raises(InvalidInput, match="1 to 64"):
        inbox_messages(over)
