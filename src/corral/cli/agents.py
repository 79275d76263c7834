"""``corral agent ...``"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from corral.cli.context import Context, pass_ctx, run
from corral.cli.output import console
from corral.domain.agents import MAX_SLOTS

__all__ = ["agent"]

WAIT_TIMEOUT = 60.0  # seconds the CLI waits for an answer to a request that waits itself


def _row(a: dict[str, Any]) -> list[str]:
    res = a["resources"]
    return [
        a["id"],
        a["name"],
        a["role"],
        a["state"] + (" (busy)" if a.get("currentTask") else ""),
        f"{res['requests']['cpu']}/{res['limits']['cpu']}",
        f"{res['requests']['memory']}/{res['limits']['memory']}",
        str(a["restarts"]),
    ]


def _table(agents: list[dict[str, Any]]) -> Table:
    table = Table()
    for col in ("id", "name", "role", "state", "cpu req/lim", "memory req/lim", "restarts"):
        table.add_column(col)
    for a in agents:
        table.add_row(*_row(a))
    return table


@click.group()
def agent() -> None:
    """Provision, inspect, pause, resume and terminate agents."""


@agent.command("provision")
@click.argument("org")
@click.option("--name", required=True, help="Agent name (DNS-1123 label, ≤ 30 chars).")
@click.option("--role", default="general", show_default=True)
@click.option("--cpu", help="CPU request, e.g. 500m (default: the plan's LimitRange).")
@click.option("--memory", help="Memory request, e.g. 1Gi.")
@click.option("--cpu-limit", help="CPU limit.")
@click.option("--memory-limit", help="Memory limit.")
@click.option("--gpu", type=int, default=0, show_default=True)
@click.option(
    "--command",
    "command",
    help="The agent program, as one shell-quoted string "
    "(default: the built-in general agent, python -m corral.agents.general).",
)
@click.option(
    "--slots",
    type=click.IntRange(1, MAX_SLOTS),
    default=1,
    show_default=True,
    help="Tasks the agent runs at once (its handler must allow it).",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until ready.")
@pass_ctx
def provision(
    ctx: Context,
    org: str,
    name: str,
    role: str,
    cpu: str | None,
    memory: str | None,
    cpu_limit: str | None,
    memory_limit: str | None,
    gpu: int,
    command: str | None,
    slots: int,
    wait: bool,
) -> None:
    """Provision an agent in ORG after the quota check."""
    import shlex

    def body() -> None:
        payload: dict[str, Any] = {
            "name": name,
            "role": role,
            "gpu": gpu,
            "slots": slots,
            "wait": wait,
        }
        for key, value in (
            ("cpu", cpu),
            ("memory", memory),
            ("cpuLimit", cpu_limit),
            ("memoryLimit", memory_limit),
        ):
            if value is not None:
                payload[key] = value
        if command:
            payload["command"] = shlex.split(command)
        # the API waits up to 30 s for the agent to be ready: the client waits longer
        data = ctx.client.post(f"/v1/orgs/{org}/agents", json=payload, timeout=WAIT_TIMEOUT)
        ctx.emit(data, lambda: console.print(_table([data])))

    run(body)


@agent.command("list")
@click.argument("org")
@click.option("--state", help="Only agents in this state.")
@click.option("--all", "everything", is_flag=True, help="Terminated agents too (history).")
@pass_ctx
def list_(ctx: Context, org: str, state: str | None, everything: bool) -> None:
    """List ORG's agents (those not terminated, unless --all)."""

    def body() -> None:
        params: dict[str, str] = {"state": state} if state else {}
        if everything:
            params["terminated"] = "true"
        data = ctx.client.get(f"/v1/orgs/{org}/agents", params=params)
        ctx.emit(data, lambda: console.print(_table(data["agents"])))

    run(body)


@agent.command("show")
@click.argument("org")
@click.argument("agent_id")
@pass_ctx
def show(ctx: Context, org: str, agent_id: str) -> None:
    """Show one agent (by id or name), with its lifecycle timestamps."""

    def body() -> None:
        data = ctx.client.get(f"/v1/orgs/{org}/agents/{agent_id}")

        def human() -> None:
            console.print(_table([data]))
            for key in ("createdAt", "lastSeenAt", "pausedAt", "resumedAt", "terminatedAt"):
                if data.get(key):
                    console.print(f"{key}: {data[key]}")
            if data.get("detail"):
                console.print(f"detail: {data['detail']}")
            if data.get("sandbox"):
                console.print(f"sandbox: {data['sandbox']}")

        ctx.emit(data, human)

    run(body)


@agent.command("pause")
@click.argument("org")
@click.argument("agent_id")
@click.option("--force", is_flag=True, help="Pause even if it is busy (its task is retried).")
@pass_ctx
def pause(ctx: Context, org: str, agent_id: str, force: bool) -> None:
    """Pause an agent to zero: checkpoint, stop, keep the workspace."""

    def body() -> None:
        data = ctx.client.post(
            f"/v1/orgs/{org}/agents/{agent_id}/pause", params={"force": str(force).lower()}
        )
        ctx.emit(data, lambda: console.print(f"{agent_id} {data['state']} at {data['pausedAt']}"))

    run(body)


@agent.command("resume")
@click.argument("org")
@click.argument("agent_id")
@click.option("--wait/--no-wait", default=True, show_default=True)
@pass_ctx
def resume(ctx: Context, org: str, agent_id: str, wait: bool) -> None:
    """Resume a paused agent with its workspace and checkpoint."""

    def body() -> None:
        data = ctx.client.post(
            f"/v1/orgs/{org}/agents/{agent_id}/resume",
            params={"wait": str(wait).lower()},
            timeout=WAIT_TIMEOUT,
        )
        ctx.emit(data, lambda: console.print(f"{agent_id} {data['state']}"))

    run(body)


@agent.command("terminate")
@click.argument("org")
@click.argument("agent_id")
@click.option("--keep-workspace", is_flag=True, help="Keep the agent's workspace on disk.")
@pass_ctx
def terminate(ctx: Context, org: str, agent_id: str, keep_workspace: bool) -> None:
    """Terminate an agent and release its quota."""

    def body() -> None:
        ctx.client.request(
            "DELETE",
            f"/v1/orgs/{org}/agents/{agent_id}",
            params={"keep_workspace": str(keep_workspace).lower()},
        )
        ctx.emit({"terminated": agent_id}, lambda: console.print(f"terminated {agent_id}"))

    run(body)


@agent.command("logs")
@click.argument("org")
@click.argument("agent_id")
@click.option("--tail", type=int, default=200, show_default=True)
@pass_ctx
def logs(ctx: Context, org: str, agent_id: str, tail: int) -> None:
    """Print the last lines of an agent's log."""

    def body() -> None:
        data = ctx.client.get(f"/v1/orgs/{org}/agents/{agent_id}/logs", params={"tail": tail})
        ctx.emit(data, lambda: click.echo(data["logs"], nl=False))

    run(body)
