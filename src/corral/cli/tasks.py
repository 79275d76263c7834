"""``corral task ...``"""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from corral.cli.context import Context, pass_ctx, run
from corral.domain.errors import InvalidInput

__all__ = ["task"]

console = Console()
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
@click.option("--payload", default="{}", show_default=True, help="JSON object for the agent.")
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
    watch_: bool,
    max_tokens: int | None,
    max_cost: str | None,
) -> None:
    """Submit a task to ORG (exactly one of --role or --agent)."""

    def body() -> None:
        if (role is None) == (agent_id is None):
            raise InvalidInput("give exactly one of --role or --agent")
        try:
            data_payload = json.loads(payload)
        except ValueError as exc:
            raise InvalidInput(f"--payload is not JSON: {exc}") from exc
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
        if max_tokens is not None:
            body_["maxTokens"] = max_tokens
        if max_cost is not None:
            body_["maxCost"] = max_cost
        data = ctx.client.post(f"/v1/orgs/{org}/tasks", json=body_)
        if watch_ and not ctx.as_json:
            console.print(f"submitted {data['id']}")
            _watch(ctx, org, data["id"])
            return
        ctx.emit(data, lambda: console.print(f"submitted {data['id']} ({data['state']})"))

    run(body)


@task.command("list")
@click.argument("org")
@click.option("--state", help="Comma-separated states, e.g. queued,running.")
@pass_ctx
def list_(ctx: Context, org: str, state: str | None) -> None:
    """List ORG's tasks."""

    def body() -> None:
        params = {"state": state} if state else {}
        data = ctx.client.get(f"/v1/orgs/{org}/tasks", params=params)
        ctx.emit(data, lambda: console.print(_table(data["tasks"])))

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
    """Show a live progress bar until the task is done."""
    run(lambda: _watch(ctx, org, task_id, timeout=timeout))


def _watch(ctx: Context, org: str, task_id: str, *, timeout: float = 3600.0) -> None:
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
            data = ctx.client.get(f"/v1/orgs/{org}/tasks/{task_id}")
            bar.update(handle, completed=data["progress"] or 0.0, state=data["state"])
            if data["state"] in TERMINAL or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    console.print(f"{task_id}: {data['state']}")
    if data.get("result") is not None:
        console.print_json(json.dumps(data["result"]))
    if data["state"] != "completed":
        raise SystemExit(1)
