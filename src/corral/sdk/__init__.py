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

from corral.sdk.agent import Agent
from corral.sdk.config import AgentConfig
from corral.sdk.context import Blocked, TaskContext

__all__ = ["Agent", "AgentConfig", "Blocked", "TaskContext"]
