"""The smallest Corral agent: answers every task with its payload.

Provision it with::

    corral agent provision acme --name echo --role echo \
        --command "python examples/echo_agent.py"
"""

from __future__ import annotations

from typing import Any

from corral.sdk import Agent, TaskContext

agent = Agent.from_env()


@agent.task
async def handle(ctx: TaskContext) -> dict[str, Any]:
    await ctx.progress(1.0)
    return {"echo": ctx.payload, "attempt": ctx.attempt}


if __name__ == "__main__":
    agent.run()
