"""The program of a declared role in the role tests: it says which agent ran the task and what
its role's environment said, and sleeps when asked (so that a burst keeps its agents busy)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from corral.sdk import Agent, TaskContext

agent = Agent.from_env()


@agent.task
async def handle(ctx: TaskContext) -> dict[str, Any]:
    seconds = float(ctx.payload.get("sleep", 0))
    if seconds:
        await asyncio.sleep(seconds)
    return {"agent": os.environ["CORRAL_AGENT_ID"], "model": os.environ.get("MODEL")}


if __name__ == "__main__":
    agent.run()
