"""What a task handler sees: its task, its workspace, and the calls it may make.

A :class:`TaskContext` reaches the agent running it only through :class:`TaskHost`, the four
things it needs, so that the context never depends on the agent's internals and can be built
over any host (a test's, say).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from corral.domain.messages import TaskMessage
from corral.sdk.config import AgentConfig
from corral.sdk.llm import ModelClient

__all__ = ["Blocked", "TaskContext", "TaskHost"]


class Blocked(Exception):  # noqa: N818 - reads as the outcome it is
    """Raise from a handler to end the task as ``blocked`` with a reason: the agent's own
    "I cannot do this", never retried. Any other exception fails the attempt, which the
    task's retry policy may retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TaskHost(Protocol):
    """What a task context asks of the agent running its task."""

    @property
    def config(self) -> AgentConfig: ...

    async def report_progress(self, task_id: str, fraction: float, detail: dict[str, Any]) -> None:
        """Report progress on a task in hand (``accepted`` first, if not yet said)."""
        ...

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
        """Run a child task elsewhere in the org and return its result."""
        ...

    async def secret(self, name: str) -> bytes:
        """Read a secret granted to this agent."""
        ...


class TaskContext:
    """One task being handled: its payload, progress reports and delegation."""

    def __init__(self, agent: TaskHost, message: TaskMessage) -> None:
        self._agent = agent
        self.message = message
        self.task_id = message.task_id
        self.payload = message.payload
        self.attempt = message.attempt
        self._llm: ModelClient | None = None

    @property
    def workspace(self) -> Path:
        return self._agent.config.workspace

    @property
    def llm(self) -> ModelClient:
        """The org's models through the platform's gateway, each call charged to this task.

        Raises:
            InvalidInput: the agent was started without a model gateway.
        """
        if self._llm is None:
            self._llm = ModelClient.from_env(task_id=self.task_id)
        return self._llm

    async def progress(self, fraction: float, **detail: Any) -> None:
        """Report progress (0..1) on this task, as the seed's ``working`` status; it is also
        the task's heartbeat (see its heartbeat timeout)."""
        await self._agent.report_progress(self.task_id, fraction, detail)

    async def delegate(
        self,
        payload: dict[str, Any],
        *,
        role: str | None = None,
        agent: str | None = None,
        priority: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Ask the platform to run a child task on another agent or role of this org, and
        wait (asynchronously) for its result. The child has this task's priority unless
        ``priority`` says otherwise.

        Raises:
            Blocked: the child task ended blocked or failed (its reason is carried).
            asyncio.TimeoutError: no result within ``timeout``.
        """
        return await self._agent.delegate(
            self.task_id, payload, role=role, agent=agent, priority=priority, timeout=timeout
        )

    async def secret(self, name: str) -> bytes:
        return await self._agent.secret(name)
