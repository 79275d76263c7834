"""A task context reaches its agent only through the TaskHost protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.domain.messages import MessageType, TaskMessage
from corral.sdk import AgentConfig, TaskContext
from corral.sdk.context import TaskHost


class _Host:
    def __init__(self, workspace: Path) -> None:
        self.config = AgentConfig("o", "a1", "general", "nats://x", workspace / "c", workspace)
        self.calls: list[tuple[Any, ...]] = []

    async def report_progress(self, task_id: str, fraction: float, detail: dict[str, Any]) -> None:
        self.calls.append(("progress", task_id, fraction, detail))

    async def delegate(
        self,
        parent_task: str,
        payload: dict[str, Any],
        *,
        role: str | None = None,
        agent: str | None = None,
        priority: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("delegate", parent_task, payload, role, agent, priority, timeout))
        return {"done": True}

    async def secret(self, name: str) -> bytes:
        self.calls.append(("secret", name))
        return b"s3cret"


@pytest.fixture
def host(tmp_path: Path) -> _Host:
    return _Host(tmp_path)


def _context(host: TaskHost) -> TaskContext:
    message = TaskMessage("task_01", "platform", "a1", MessageType.DELEGATE, {"n": 1}, 2)
    return TaskContext(host, message)


async def test_a_context_reports_delegates_and_reads_secrets_for_its_own_task(
    host: _Host,
) -> None:
    ctx = _context(host)
    assert (ctx.task_id, ctx.payload, ctx.attempt) == ("task_01", {"n": 1}, 2)
    assert ctx.workspace == host.config.workspace
    await ctx.progress(0.5, step="one")
    assert await ctx.delegate({"x": 1}, role="worker", timeout=3.0) == {"done": True}
    assert await ctx.secret("token") == b"s3cret"
    assert host.calls == [
        ("progress", "task_01", 0.5, {"step": "one"}),
        ("delegate", "task_01", {"x": 1}, "worker", None, None, 3.0),  # the parent's priority
        ("secret", "token"),
    ]
