"""The agent SDK: what an agent program imports.

An agent takes tasks from its durable inbox, reports status and progress, delegates to other
agents of its organization, reads secrets granted to it, and saves/restores its state in its
workspace when it is paused and resumed. It depends only on the domain and the NATS client.

    from corral.sdk import Agent, Blocked, TaskContext

    agent = Agent.from_env()

    @agent.task
    async def handle(ctx: TaskContext) -> dict:
        await ctx.progress(0.5)
        return {"ok": True}

    agent.run()

One module per concept: ``config`` (the environment), ``context`` (what a handler sees, and
the :class:`~corral.sdk.context.TaskHost` protocol it reaches the agent through), ``workers``
(the slot pool), ``outbox`` (statuses and batched task events), ``vault`` (secret reads),
``checkpoints`` (state in the workspace), ``signing`` (the agent's signature on a secret
request) and ``agent`` (the serve loop, delegation and the control channel, wiring the rest).
The context never imports the agent, and only the agent imports the rooms it wires.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.sdk.agent import Agent
    from corral.sdk.config import AgentConfig
    from corral.sdk.context import Blocked, TaskContext

__all__ = ["Agent", "AgentConfig", "Blocked", "TaskContext"]

# Imported on first use: the control plane imports one room of the SDK (``objects``), and
# the package importing the agent would bring the model client and its HTTP stack with it.
_WHERE = {
    "Agent": "corral.sdk.agent",
    "AgentConfig": "corral.sdk.config",
    "Blocked": "corral.sdk.context",
    "TaskContext": "corral.sdk.context",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
