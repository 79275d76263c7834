"""What the SDK does with a result by its size, before any bus is involved, and the limits an
agent reads from its environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.domain.errors import InvalidInput, TooLarge
from corral.domain.messages import MessageType, TaskMessage
from corral.sdk import Agent, AgentConfig

MiB = 1024 * 1024


def _agent(tmp_path: Path, **limits: int) -> Agent:
    config = AgentConfig("o", "a1", "general", "nats://x", tmp_path / "c", tmp_path, **limits)
    return Agent(config)


async def test_a_result_that_fits_one_message_is_sent_as_it_is(tmp_path: Path) -> None:
    agent = _agent(tmp_path, max_payload=MiB, max_object=8 * MiB)
    message = TaskMessage("task_1", "platform", "a1", MessageType.DELEGATE, {}, 1)
    result = {"blob": "x" * 500_000}
    assert await agent._deliverable(message, result) is result


async def test_a_result_over_the_maximum_is_refused_with_its_size_and_the_limit(
    tmp_path: Path,
) -> None:
    agent = _agent(tmp_path, max_payload=MiB, max_object=8 * MiB)
    message = TaskMessage("task_1", "platform", "a1", MessageType.DELEGATE, {}, 1)
    with pytest.raises(TooLarge) as refused:  # before it needs any bus
        await agent._deliverable(message, {"blob": "x" * 9_000_000})
    assert refused.value.details == {"size": 9_000_011, "limit": 8 * MiB}
    assert "the result of task_1 is 9000011 bytes" in refused.value.message


def test_the_limits_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "CORRAL_ORG": "o",
        "CORRAL_AGENT_ID": "a1",
        "CORRAL_NATS_URL": "nats://x",
        "CORRAL_CREDS_FILE": str(tmp_path / "c"),
        "CORRAL_MAX_OBJECT": str(64 * MiB),
        "CORRAL_INGRESS_BYTES": str(8 * MiB),
    }
    config = AgentConfig.from_env(env)
    assert (config.max_object, config.ingress_bytes) == (64 * MiB, 8 * MiB)
    with pytest.raises(InvalidInput, match="CORRAL_MAX_OBJECT"):
        AgentConfig.from_env({**env, "CORRAL_MAX_OBJECT": "lots"})
