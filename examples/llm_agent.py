"""An agent that calls models through the platform's gateway with the plain ``openai``
client: ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` (its own gateway credential, not a
provider's key) come from the environment the platform gives it.

Each task's payload says what to do: ``{"model": "...", "calls": 3, "concurrent": false,
"stream": false, "maxTokens": 5}``; the result holds the answers and any refusals. Provision it
with::

    corral agent provision acme --name writer --role writer \
        --command "python examples/llm_agent.py"
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai

from corral.sdk import Agent, TaskContext

agent = Agent.from_env()


async def _one(client: openai.AsyncOpenAI, ctx: TaskContext, p: dict[str, Any]) -> dict[str, Any]:
    headers = {"X-Corral-Task": ctx.task_id}
    messages = [{"role": "user", "content": p.get("prompt", "Say hello")}]
    try:
        if p.get("embed"):
            e = await client.embeddings.create(
                model=p["model"], input="hello", extra_headers=headers
            )
            return {"ok": True, "dims": len(e.data[0].embedding)}
        if p.get("stream"):
            text, usage = "", None
            stream = await client.chat.completions.create(
                model=p["model"],
                messages=messages,  # type: ignore[arg-type]
                max_tokens=p.get("maxTokens", 5),
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                if chunk.usage is not None:
                    usage = chunk.usage.total_tokens
            return {"ok": True, "text": text, "usage": usage}
        r = await client.chat.completions.create(
            model=p["model"],
            messages=messages,  # type: ignore[arg-type]
            max_tokens=p.get("maxTokens", 5),
            extra_headers=headers,
        )
        return {
            "ok": True,
            "text": r.choices[0].message.content,
            "usage": r.usage.total_tokens if r.usage else None,
        }
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        return {
            "ok": False,
            "error": type(exc).__name__,
            "status": exc.status_code,
            "code": body.get("code"),
            "details": str(exc),
        }


@agent.task
async def handle(ctx: TaskContext) -> dict[str, Any]:
    p = ctx.payload
    client = openai.AsyncOpenAI(max_retries=0)  # base URL and key from the environment
    try:
        calls = int(p.get("calls", 1))
        if p.get("concurrent"):
            results = await asyncio.gather(*(_one(client, ctx, p) for _ in range(calls)))
        else:
            results = []
            for _ in range(calls):
                results.append(await _one(client, ctx, p))
    finally:
        await client.close()
    return {"results": list(results)}


if __name__ == "__main__":
    agent.run()
