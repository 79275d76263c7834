"""An agent that calls its org's models through ``ctx.llm`` — each call charged to its task —
then delegates the rest of the work to a ``writer`` agent (``examples/llm_agent.py``), whose
calls count against the same task budget, and returns both. Its payload:
``{"model": "small", "childCalls": 3}``."""

from __future__ import annotations

from typing import Any

from corral.domain.errors import CorralError
from corral.sdk import Agent, TaskContext

agent = Agent.from_env()


@agent.task
async def handle(ctx: TaskContext) -> dict[str, Any]:
    p = ctx.payload
    messages = [{"role": "user", "content": "plan the work"}]
    answer = await ctx.llm.chat(model=p["model"], messages=messages, max_tokens=5)
    streamed = 0
    async for chunk in ctx.llm.stream(model=p["model"], messages=messages, max_tokens=5):
        if chunk.get("usage"):
            streamed = chunk["usage"]["total_tokens"]
    try:
        await ctx.llm.chat(model="no-such-model", messages=messages)
        missing = "answered"
    except CorralError as exc:
        missing = exc.code
    child = await ctx.delegate({"model": p["model"], "calls": p["childCalls"]}, role="writer")
    return {
        "own": answer["usage"]["total_tokens"],
        "streamed": streamed,
        "missing": missing,
        "child": child,
    }


if __name__ == "__main__":
    agent.run()
