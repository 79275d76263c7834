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
"""

from corral.sdk.agent import Agent, AgentConfig, Blocked, TaskContext

__all__ = ["Agent", "AgentConfig", "Blocked", "TaskContext"]
