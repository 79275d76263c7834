"""The built-in general-purpose agent: what runs when no ``--command`` is given.

Payload operations (``{"op": ...}``):

- ``echo``: returns the payload.
- ``sleep``: ``seconds`` (≤ 3600), reporting progress ten times along the way.
- ``wordcount``: counts words of ``text``; returns ``{"words": n, "top": [[word, n], ...]}``.
- ``write`` / ``read``: a ``file`` in the agent's workspace (``content`` for write).
- ``secret``: reads secret ``name`` through the vault; returns its length and SHA-256, never
  the value.
- ``delegate``: sends ``payload`` to ``role`` (or ``agent``) of the same org and returns the
  result.
- ``split``: a manager's job: splits ``text`` (or the bundled corpus when ``corpus`` is true)
  into ``parts`` chunks, delegates a ``wordcount`` of each to ``role`` and merges the counts.
- ``llm``: ``calls`` (≤ 100) chat completions of ``model`` through the platform's model
  gateway (``ctx.llm``, tagged with the task), streamed when ``stream`` is true, each asking
  for at most ``maxTokens``; returns each call's ``usage`` and, if the gateway refused one (a
  budget, a rate), the refusal, after which it stops.
- ``fail``: ends the task blocked with ``reason``.
- ``probe_workspace``: the workspace's path and mode, for isolation checks.
- ``probe_bus``: for ``seconds`` (≤ 30), a second bus connection with this agent's own
  credentials subscribes to everything (``>``), to org ``other``'s subjects and to every
  reply inbox; returns which subscriptions the server refused, how many messages arrived and
  how many of them were foreign (another org's subject, or naming ``other``). An isolation
  probe: ``corral check-isolation`` runs it while ``other`` is busy.

The agent counts the tasks it has done in its state, which survives pause and resume through
its checkpoint.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import re
import stat
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from corral.domain import subjects
from corral.domain.errors import BudgetExceeded, CorralError, RateLimited
from corral.sdk import Agent, AgentConfig, Blocked, TaskContext

__all__ = ["build", "count_words", "main"]

_WORD = re.compile(r"[a-z']+")


def count_words(text: str) -> collections.Counter[str]:
    return collections.Counter(_WORD.findall(text.lower()))


def corpus() -> str:
    from importlib import resources  # only the manager's split needs it

    return resources.files("corral.data").joinpath("corpus.txt").read_text(encoding="utf-8")


def _safe_path(workspace: Path, name: object) -> Path:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise Blocked("'file' must be a plain file name inside the workspace")
    return workspace / name


def build(agent: Agent) -> None:
    @agent.checkpoint
    def save() -> dict[str, Any]:
        return agent.state

    @agent.task
    async def handle(ctx: TaskContext) -> dict[str, Any]:
        p = ctx.payload
        op = p.get("op", "echo")
        agent.state["tasks_done"] = int(agent.state.get("tasks_done", 0)) + 1
        if op == "echo":
            return {"echo": p}
        if op == "sleep":
            seconds = float(p.get("seconds", 1))
            if not 0 <= seconds <= 3600:
                raise Blocked("'seconds' must be between 0 and 3600")
            for i in range(10):
                await asyncio.sleep(seconds / 10)
                await ctx.progress((i + 1) / 10)
            return {"slept": seconds}
        if op == "wordcount":
            counts = count_words(str(p.get("text", "")))
            return {"words": sum(counts.values()), "top": counts.most_common(int(p.get("top", 5)))}
        if op == "write":
            _safe_path(ctx.workspace, p.get("file")).write_text(str(p.get("content", "")))
            return {"written": p.get("file")}
        if op == "read":
            path = _safe_path(ctx.workspace, p.get("file"))
            if not path.exists():
                raise Blocked(f"no file {p.get('file')!r} in the workspace")
            return {"content": path.read_text(), "tasks_done": agent.state["tasks_done"]}
        if op == "secret":
            try:
                value = await ctx.secret(str(p.get("name", "")))
            except CorralError as exc:  # not granted, or no such secret: nothing to retry
                raise Blocked(f"{type(exc).__name__}: {exc.message}") from exc
            return {"length": len(value), "sha256": hashlib.sha256(value).hexdigest()}
        if op == "delegate":
            role = p.get("role")
            target = p.get("agent")
            return await ctx.delegate(
                dict(p.get("payload", {})),
                role=str(role) if role else None,
                agent=str(target) if target else None,
            )
        if op == "split":
            return await _split(ctx, p)
        if op == "llm":
            return await _llm(ctx, p)
        if op == "fail":
            raise Blocked(str(p.get("reason", "asked to fail")))
        if op == "state":
            return {"state": agent.state}
        if op == "probe_workspace":
            mode = stat.S_IMODE(ctx.workspace.stat().st_mode)
            return {"path": str(ctx.workspace.resolve()), "mode": f"{mode:04o}"}
        if op == "probe_bus":
            return await _probe_bus(agent.config, p)
        raise Blocked(f"unknown op {op!r}")


async def _split(ctx: TaskContext, p: dict[str, Any]) -> dict[str, Any]:
    text = corpus() if p.get("corpus") else str(p.get("text", ""))
    parts = max(1, min(int(p.get("parts", 4)), 64))
    role = str(p.get("role", "worker"))
    lines = text.splitlines()
    size = max(1, -(-len(lines) // parts))
    chunks = ["\n".join(lines[i : i + size]) for i in range(0, len(lines), size)]
    total: collections.Counter[str] = collections.Counter()
    done = 0

    async def one(chunk: str) -> None:
        nonlocal done
        result = await ctx.delegate({"op": "wordcount", "text": chunk, "top": 50}, role=role)
        total.update(dict(result.get("top", [])))
        total["__words__"] += int(result.get("words", 0))
        done += 1
        await ctx.progress(done / len(chunks), parts_done=done)

    await asyncio.gather(*(one(c) for c in chunks))
    words = total.pop("__words__", 0)
    return {"parts": len(chunks), "words": words, "top": total.most_common(10)}


async def _llm(ctx: TaskContext, p: dict[str, Any]) -> dict[str, Any]:
    model = p.get("model")
    calls = p.get("calls", 1)
    if not isinstance(model, str) or not model:
        raise Blocked("'model' must name one of the org's models")
    if not isinstance(calls, int) or not 0 < calls <= 100:
        raise Blocked("'calls' must be a whole number between 1 and 100")
    max_tokens = p.get("maxTokens", 16)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise Blocked("'maxTokens' must be a whole number of at least 1")
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": str(p.get("prompt", "Say hello"))}],
        "max_tokens": max_tokens,
    }
    answers: list[dict[str, Any]] = []
    usage: dict[str, Any]
    try:
        for _ in range(calls):
            if p.get("stream"):
                text, usage = "", {}
                async for chunk in ctx.llm.stream(**body):
                    for choice in chunk.get("choices") or []:
                        text += (choice.get("delta") or {}).get("content") or ""
                    usage = chunk.get("usage") or usage
            else:
                answer = await ctx.llm.chat(**body)
                text = answer["choices"][0]["message"]["content"]
                usage = answer.get("usage") or {}
            answers.append({"text": text, "usage": usage})
    except (BudgetExceeded, RateLimited) as exc:
        refusal = {"error": type(exc).__name__, "message": exc.message}
        return {"calls": answers, "refused": refusal}
    return {"calls": answers}


async def _probe_bus(config: AgentConfig, p: dict[str, Any]) -> dict[str, Any]:
    other = str(p.get("other", ""))
    if not other:
        raise Blocked("'other' must name the organization to look for")
    seconds = float(p.get("seconds", 2))
    if not 0 < seconds <= 30:
        raise Blocked("'seconds' must be between 0 and 30")
    own_prefixes = (
        f"{subjects.org_prefix(config.org)}.",
        f"{subjects.agent_inbox_prefix(config.agent_id)}.",
        f"{subjects.BROADCAST_PREFIX}.",
        subjects.PLATFORM_STATUS,
    )
    wanted = [">", f"{subjects.org_prefix(other)}.>", "_INBOX.>"]
    errors: list[str] = []
    received: list[Msg] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    async def record(msg: Msg) -> None:
        received.append(msg)

    try:
        nc = await nats.connect(
            config.nats_url,
            user_credentials=str(config.creds_file),
            inbox_prefix=subjects.agent_inbox_prefix(config.agent_id).encode(),
            error_cb=on_error,
            allow_reconnect=False,
            name=f"{config.agent_id}-probe",
        )
    except Exception as exc:
        raise Blocked(f"the probe cannot connect to the bus: {exc}") from exc
    try:
        for subject in wanted:
            await nc.subscribe(subject, cb=record)
        await nc.flush()
        await asyncio.sleep(seconds)
        await nc.flush()
    finally:
        await nc.close()

    def is_foreign(msg: Msg) -> bool:
        named = other in msg.subject or other.encode() in msg.data
        return named or not msg.subject.startswith(own_prefixes)

    def refused(subject: str) -> bool:
        return any(
            "permissions violation" in e.lower()
            and f'subscription to "{subject.lower()}"' in e.lower()
            for e in errors
        )

    foreign = [m.subject for m in received if is_foreign(m)]
    return {
        "subscribed": wanted,
        "refused": [s for s in wanted if refused(s)],
        "received": len(received),
        "foreign": len(foreign),
        "foreignSubjects": sorted(set(foreign))[:10],
        "errors": errors[:10],
    }


def main() -> None:
    agent = Agent.from_env()
    build(agent)
    agent.run()


if __name__ == "__main__":
    main()
