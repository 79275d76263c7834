"""``corral task ...``"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from corral.cli.context import Context, pass_ctx, run
from corral.cli.output import console, json_line
from corral.domain.errors import InvalidInput
from corral.domain.policies import parse_duration

__all__ = ["read_payload", "task"]

TERMINAL = {"completed", "blocked", "failed", "cancelled", "expired"}


def _table(tasks: list[dict[str, Any]]) -> Table:
    table = Table()
    for col in ("id", "priority", "state", "progress", "role/agent", "assigned", "attempts"):
        table.add_column(col)
    for t in tasks:
        progress = "" if t["progress"] is None else f"{t['progress']:.0%}"
        table.add_row(
            t["id"],
            t["priority"],
            t["state"],
            progress,
            t["role"] or t["agent"] or "",
            t["assignedAgent"] or "",
            str(t["attempts"]),
        )
    return table


@click.group()
def task() -> None:
    """Submit, list, inspect, watch and cancel tasks."""


@task.command("submit")
@click.argument("org")
@click.option("--role", help="Any agent of this role (provisioned on demand).")
@click.option("--agent", "agent_id", help="This one agent.")
@click.option(
    "--priority",
    type=click.Choice(["low", "normal", "high", "critical"]),
    default="normal",
    show_default=True,
)
@click.option("--deadline", help="10m, 2h, 30s or an ISO-8601 time.")
@click.option("--cpu", help="Required CPU (the agent's request must cover it).")
@click.option("--memory", help="Required memory.")
@click.option("--gpu", type=int, default=0)
@click.option(
    "--payload",
    default="{}",
    show_default=True,
    help="JSON object for the agent; @FILE reads it from a file, - from stdin.",
)
@click.option("--max-attempts", type=int, help="Attempts before it fails (plan default).")
@click.option("--backoff", help="Wait after the first failed attempt, e.g. 1s (plan default).")
@click.option("--max-backoff", help="Longest wait between attempts, e.g. 1m.")
@click.option("--backoff-multiplier", type=float, help="Each wait is this times the last.")
@click.option("--non-retryable", help="Error types that fail it at once, e.g. ValueError,KeyError.")
@click.option("--run-timeout", help="Longest run of one attempt, e.g. 10m (plan default).")
@click.option("--heartbeat-timeout", help="Longest silence between progress reports, e.g. 30s.")
@click.option("--idempotency-key", help="Submitting again with this key returns the same task.")
@click.option("--watch", "watch_", is_flag=True, help="Then watch it until it is done.")
@click.option("--max-tokens", type=int, help="Model tokens it and its delegated children may use.")
@click.option("--max-cost", help="Dollars of model calls it and its delegated children may spend.")
@pass_ctx
def submit(
    ctx: Context,
    org: str,
    role: str | None,
    agent_id: str | None,
    priority: str,
    deadline: str | None,
    cpu: str | None,
    memory: str | None,
    gpu: int,
    payload: str,
    max_attempts: int | None,
    backoff: str | None,
    max_backoff: str | None,
    backoff_multiplier: float | None,
    non_retryable: str | None,
    run_timeout: str | None,
    heartbeat_timeout: str | None,
    idempotency_key: str | None,
    watch_: bool,
    max_tokens: int | None,
    max_cost: str | None,
) -> None:
    """Submit a task to ORG (exactly one of --role or --agent). Retries and timeouts not
    given take the org's plan's defaults (`corral org show`)."""

    def body() -> None:
        if (role is None) == (agent_id is None):
            raise InvalidInput("give exactly one of --role or --agent")
        data_payload = read_payload(payload)
        reqs: dict[str, Any] = {"gpu": gpu}
        if cpu:
            reqs["cpu"] = cpu
        if memory:
            reqs["memory"] = memory
        body_: dict[str, Any] = {
            "priority": priority,
            "payload": data_payload,
            "requirements": reqs,
        }
        if role:
            body_["role"] = role
        if agent_id:
            body_["agent"] = agent_id
        if deadline:
            body_["deadline"] = deadline
        retry = {
            k: v
            for k, v in (
                ("maxAttempts", max_attempts),
                ("initialBackoff", _seconds(backoff, "--backoff")),
                ("maxBackoff", _seconds(max_backoff, "--max-backoff")),
                ("multiplier", backoff_multiplier),
                ("nonRetryable", non_retryable.split(",") if non_retryable else None),
            )
            if v is not None
        }
        if retry:
            body_["retry"] = retry
        for key, value in (
            ("runTimeout", _seconds(run_timeout, "--run-timeout")),
            ("heartbeatTimeout", _seconds(heartbeat_timeout, "--heartbeat-timeout")),
            ("idempotencyKey", idempotency_key),
        ):
            if value is not None:
                body_[key] = value
        if max_tokens is not None:
            body_["maxTokens"] = max_tokens
        if max_cost is not None:
            body_["maxCost"] = max_cost
        data = ctx.client.post(f"/v1/orgs/{org}/tasks", json=body_)
        if watch_:
            _watch(ctx, org, data["id"], submitted=data)
            return
        ctx.emit(data, lambda: console.print(f"submitted {data['id']} ({data['state']})"))

    run(body)


@task.command("list")
@click.argument("org")
@click.option("--state", help="Comma-separated states, e.g. queued,running.")
@click.option("--role", help="Only tasks for this role.")
@click.option("--agent", "agent_id", help="Only tasks sent to or run by this agent.")
@click.option("--priority", help="Comma-separated priorities, e.g. high,critical.")
@click.option("--parent", help="Only the tasks this task delegated.")
@click.option("--limit", type=int, default=50, show_default=True, help="Tasks per page.")
@click.option("--cursor", help="The page after the one that printed this cursor.")
@pass_ctx
def list_(
    ctx: Context,
    org: str,
    state: str | None,
    role: str | None,
    agent_id: str | None,
    priority: str | None,
    parent: str | None,
    limit: int,
    cursor: str | None,
) -> None:
    """List ORG's tasks, newest first, a page at a time."""

    def body() -> None:
        given = {
            "state": state,
            "role": role,
            "agent": agent_id,
            "priority": priority,
            "parent": parent,
            "cursor": cursor,
        }
        params: dict[str, Any] = {k: v for k, v in given.items() if v}
        params["limit"] = limit
        data = ctx.client.get(f"/v1/orgs/{org}/tasks", params=params)

        def human() -> None:
            console.print(_table(data["tasks"]))
            if data.get("nextCursor"):
                console.print(f"more: --cursor {data['nextCursor']}")

        ctx.emit(data, human)

    run(body)


@task.command("show")
@click.argument("org")
@click.argument("task_id")
@pass_ctx
def show(ctx: Context, org: str, task_id: str) -> None:
    """Show a task with its history of transitions."""

    def body() -> None:
        data = ctx.client.get(f"/v1/orgs/{org}/tasks/{task_id}")

        def human() -> None:
            console.print(_table([data]))
            if data.get("waiting"):
                console.print(f"waiting: {data['waiting']}")
            hist = Table(title="history")
            for col in ("at", "from", "to", "detail"):
                hist.add_column(col)
            for h in data["history"]:
                hist.add_row(h["at"], h["from"] or "", h["to"], h["detail"])
            console.print(hist)
            models = data.get("modelUsage") or {}
            if models.get("byModel") or models.get("budget"):
                used = Table(title=f"model usage: {models['tokens']} tokens, ${models['cost']}")
                for col in ("model", "calls", "tokens in", "tokens out", "cost $"):
                    used.add_column(col)
                for m in models["byModel"]:
                    used.add_row(
                        m["model"],
                        str(m["calls"]),
                        str(m["tokensIn"]),
                        str(m["tokensOut"]),
                        m["cost"],
                    )
                console.print(used)
                if models.get("budget"):
                    console.print(f"budget: {models['budget']}")
            if data.get("result") is not None:
                console.print_json(json.dumps(data["result"]))

        ctx.emit(data, human)

    run(body)


@task.command("cancel")
@click.argument("org")
@click.argument("task_id")
@pass_ctx
def cancel(ctx: Context, org: str, task_id: str) -> None:
    """Cancel a task that has not finished."""

    def body() -> None:
        data = ctx.client.post(f"/v1/orgs/{org}/tasks/{task_id}/cancel")
        ctx.emit(data, lambda: console.print(f"{task_id} {data['state']}"))

    run(body)


@task.command("watch")
@click.argument("org")
@click.argument("task_id")
@click.option("--timeout", type=float, default=3600.0, show_default=True)
@pass_ctx
def watch(ctx: Context, org: str, task_id: str, timeout: float) -> None:
    """Show a live progress bar until the task is done (with --json: each change of its
    state or progress as one JSON line). Exits 0 if it completed, 1 otherwise."""
    run(lambda: _watch(ctx, org, task_id, timeout=timeout))


def _watch(
    ctx: Context,
    org: str,
    task_id: str,
    *,
    timeout: float = 3600.0,
    submitted: dict[str, Any] | None = None,
) -> None:
    try:
        if submitted is not None and ctx.as_json:
            json_line(submitted)
        elif submitted is not None:
            console.print(f"submitted {task_id}")
        if ctx.as_json:
            data = _stream(ctx, org, task_id, timeout=timeout, seen=submitted)
        else:
            data = _bar(ctx, org, task_id, timeout=timeout)
    except KeyboardInterrupt:
        click.echo(
            f"stopped watching; task {task_id} goes on. Follow it again with "
            f"`corral task watch {org} {task_id}`, or cancel it with "
            f"`corral task cancel {org} {task_id}`",
            err=True,
        )
        raise SystemExit(130) from None
    if data["state"] != "completed":
        raise SystemExit(1)


def _stream(
    ctx: Context, org: str, task_id: str, *, timeout: float, seen: dict[str, Any] | None
) -> dict[str, Any]:
    """Each new (state, progress) of the task as one JSON line, until it ends."""
    deadline = time.monotonic() + timeout
    last = None if seen is None else (seen["state"], seen.get("progress"))
    while True:
        data: dict[str, Any] = ctx.client.get(f"/v1/orgs/{org}/tasks/{task_id}")
        if (data["state"], data["progress"]) != last:
            json_line(data)
            last = (data["state"], data["progress"])
        if data["state"] in TERMINAL or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


def _bar(ctx: Context, org: str, task_id: str, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        handle = bar.add_task(task_id, total=1.0, state="queued")
        while True:
            data: dict[str, Any] = ctx.client.get(f"/v1/orgs/{org}/tasks/{task_id}")
            bar.update(handle, completed=data["progress"] or 0.0, state=data["state"])
            if data["state"] in TERMINAL or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    console.print(f"{task_id}: {data['state']}")
    if data.get("result") is not None:
        console.print_json(json.dumps(data["result"]))
    return data


def read_payload(given: str) -> Any:
    """The ``--payload`` value: JSON itself, ``@FILE`` or ``-`` / ``@-`` (stdin). One
    command-line argument holds at most 128 KiB, a payload up to the plan's maximum."""
    source = "--payload"
    if given in ("-", "@-"):
        text = sys.stdin.read()
        source = "--payload - (stdin)"
    elif given.startswith("@"):
        path = Path(given[1:])
        source = f"--payload {given}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(f"{source}: cannot read {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{source}: {path} is not UTF-8 text") from exc
    else:
        text = given
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{source} is not JSON: {exc}") from exc


def _seconds(value: str | float | None, flag: str) -> float | None:
    """A duration flag (``30s``, ``10m``, ``2h``, or seconds) as the API takes it: seconds."""
    return None if value is None else parse_duration(value, what=flag)
