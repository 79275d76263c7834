"""An agent that misbehaves on request, for the task lifecycle tests: it raises, exits, sleeps
(noting in its workspace whether its handler ran to the end or was cancelled), says it is
blocked, returns results too large for the bus, and delegates. Provisioned with ``command=[python, this file]``; it
starts only once no file ``hold`` is in its workspace."""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from typing import Any

from corral.domain import objects
from corral.domain.errors import CorralError
from corral.sdk import Agent, Blocked, TaskContext
from corral.sdk import objects as object_io

agent = Agent.from_env()


@agent.task
async def handle(ctx: TaskContext) -> dict[str, Any]:
    p = ctx.payload
    op = p.get("op", "echo")
    if op == "echo":
        return {"echo": p, "attempt": ctx.attempt}
    if op == "raise":  # fails until attempt ``until`` (if given), then completes
        if "until" in p and ctx.attempt >= int(p["until"]):
            return {"attempt": ctx.attempt}
        kind = getattr(builtins, str(p.get("type", "ValueError")))
        raise kind(f"attempt {ctx.attempt} went wrong")
    if op == "block":
        raise Blocked(str(p.get("why", "this agent cannot do that")))
    if op == "exit":
        os._exit(int(p.get("code", 3)))
    if op == "sleep":
        return await _sleep(ctx, float(p.get("seconds", 1)), beat=bool(p.get("beat", True)))
    if op == "big":
        return {"blob": "x" * int(p["bytes"])}
    if op == "peek":  # try to read, then purge, an object of the org's store by its reference
        return await _peek(p["ref"])
    if op == "delegate":
        return await ctx.delegate(dict(p.get("payload", {})), role=str(p["role"]))
    if op == "flood-delegate":  # ask for many children at once; say what the platform said
        return await _flood(ctx, int(p["n"]), str(p["role"]))
    raise ValueError(f"unknown op {op!r}")


async def _peek(ref: dict[str, Any]) -> dict[str, Any]:
    js = agent._nc.jetstream() if agent._nc is not None else None
    assert js is not None
    try:
        data = await object_io.get(js, objects.ObjectRef.from_wire(ref), limit=1 << 30)
        read = f"read {len(data)} bytes"
    except CorralError as exc:
        read = f"{type(exc).__name__}: {exc.message}"
    try:  # not among an agent's permissions: the server does not answer it
        await js.purge_stream(objects.STREAM)
        purge = "purged"
    except Exception as exc:
        purge = f"refused: {type(exc).__name__}"
    return {"read": read, "purge": purge}


async def _flood(ctx: TaskContext, n: int, role: str) -> dict[str, Any]:
    async def one() -> str:
        try:
            await ctx.delegate({"op": "echo"}, role=role, timeout=5.0)
            return "done"
        except TimeoutError:
            return "accepted"  # queued for a role nobody serves: accepted, not refused
        except Exception as exc:  # a refusal reaches the handler as an exception
            return f"refused: {exc}"

    outcomes = await asyncio.gather(*(one() for _ in range(n)))
    refused = [o for o in outcomes if o.startswith("refused")]
    return {
        "refused": len(refused),
        "accepted": n - len(refused),
        "firstRefusal": refused[0] if refused else "",
    }


async def _sleep(ctx: TaskContext, seconds: float, *, beat: bool) -> dict[str, Any]:
    marker = ctx.workspace / f"{ctx.task_id}.{ctx.attempt}"
    marker.write_text("started")
    steps = max(1, int(seconds / 0.1))
    try:
        for i in range(steps):
            await asyncio.sleep(seconds / steps)
            if beat:
                await ctx.progress((i + 1) / steps)
    except asyncio.CancelledError:
        marker.write_text("cancelled")
        raise
    marker.write_text("finished")
    return {"slept": seconds}


if __name__ == "__main__":
    # a test holds the agent before it reports ready with a file in its workspace
    while (agent.config.workspace / "hold").exists():
        time.sleep(0.05)
    agent.run()
