"""A manager that splits a job among workers of its org and merges their answers.

Each task's payload is ``{"items": [...], "role": "worker"}``; every item is delegated to an
agent of ``role`` (provisioned on demand by the platform), in parallel, and the answers come
back asynchronously over the bus. The number of jobs done survives pause and resume through
the checkpoint hooks.

    corral agent provision acme --name boss --role manager \
        --command "python examples/manager_agent.py"
    corral task submit acme --role manager --payload '{"items": ["a b", "c"], "role": "worker"}'
"""

from __future__ import annotations

import asyncio
from typing import Any

from corral.sdk import Agent, Blocked, TaskContext

agent = Agent.from_env()
jobs_done = 0


@agent.restore
def restore(state: dict[str, Any]) -> None:
    global jobs_done
    jobs_done = int(state.get("jobs_done", 0))


@agent.checkpoint
def checkpoint() -> dict[str, Any]:
    return {"jobs_done": jobs_done}


@agent.task
async def handle(ctx: TaskContext) -> dict[str, Any]:
    global jobs_done
    items = ctx.payload.get("items")
    if not isinstance(items, list) or not items:
        raise Blocked("payload needs a non-empty 'items' list")
    role = str(ctx.payload.get("role", "worker"))
    done = 0

    async def one(item: Any) -> dict[str, Any]:
        nonlocal done
        answer = await ctx.delegate({"op": "wordcount", "text": str(item)}, role=role)
        done += 1
        await ctx.progress(done / len(items))
        return answer

    answers = await asyncio.gather(*(one(i) for i in items))
    jobs_done += 1
    return {"words": sum(int(a.get("words", 0)) for a in answers), "jobs_done": jobs_done}


if __name__ == "__main__":
    agent.run()
