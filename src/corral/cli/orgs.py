"""``corral org ...``"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from corral.cli.context import Context, pass_ctx, run
from corral.cli.output import console

__all__ = ["org", "quota_table"]


def quota_table(usage: dict[str, dict[str, str]], title: str) -> Table:
    table = Table(title=title)
    table.add_column("resource")
    table.add_column("used", justify="right")
    table.add_column("hard", justify="right")
    for resource, v in usage.items():
        table.add_row(resource, v["used"], v["hard"])
    return table


@click.group()
def org() -> None:
    """Create, inspect and remove organizations (admin key)."""


@org.command("create")
@click.argument("name")
@click.option("--plan", default="standard", show_default=True, help="free, standard, enterprise")
@pass_ctx
def create(ctx: Context, name: str, plan: str) -> None:
    """Create organization NAME; prints its API key once."""

    def body() -> None:
        data = ctx.client.post("/v1/orgs", json={"name": name, "plan": plan})

        def human() -> None:
            console.print(
                f"organization [bold]{data['name']}[/] ({data['id']}) on plan {data['plan']}"
            )
            console.print(f"namespace: {data['namespace']}")
            console.print(f"API key (shown once, keep it safe): [bold]{data['apiKey']}[/]")

        ctx.emit(data, human)

    run(body)


@org.command("list")
@pass_ctx
def list_(ctx: Context) -> None:
    """List organizations."""

    def body() -> None:
        orgs: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:  # every page
            params = {"cursor": cursor} if cursor else {}
            page = ctx.client.get("/v1/orgs", params=params)
            orgs.extend(page["orgs"])
            cursor = page.get("nextCursor")
            if not cursor:
                break
        data = {"orgs": orgs}

        def human() -> None:
            table = Table()
            for col in ("name", "id", "plan", "namespace", "created"):
                table.add_column(col)
            for o in data["orgs"]:
                table.add_row(o["name"], o["id"], o["plan"], o["namespace"], o["createdAt"])
            console.print(table)

        ctx.emit(data, human)

    run(body)


@org.command("show")
@click.argument("name")
@pass_ctx
def show(ctx: Context, name: str) -> None:
    """Show an organization and its quota (hard and used)."""

    def body() -> None:
        data = ctx.client.get(f"/v1/orgs/{name}")

        def human() -> None:
            console.print(
                f"[bold]{data['name']}[/] ({data['id']}) plan={data['plan']} "
                f"namespace={data['namespace']}"
            )
            console.print(quota_table(data["usage"], f"quota of {data['name']}"))

        ctx.emit(data, human)

    run(body)


@org.command("set-plan")
@click.argument("name")
@click.argument("plan")
@pass_ctx
def set_plan(ctx: Context, name: str, plan: str) -> None:
    """Move organization NAME to PLAN."""

    def body() -> None:
        data = ctx.client.request("PATCH", f"/v1/orgs/{name}", json={"plan": plan})
        ctx.emit(data, lambda: console.print(f"{data['name']} is now on plan {data['plan']}"))

    run(body)


@org.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def delete(ctx: Context, name: str, yes: bool) -> None:
    """Delete organization NAME with its agents, tasks, secrets and keys."""

    def body() -> None:
        if not yes and not ctx.as_json:
            click.confirm(f"delete organization {name} and everything it has?", abort=True)
        ctx.client.request("DELETE", f"/v1/orgs/{name}")
        ctx.emit({"deleted": name}, lambda: console.print(f"deleted {name}"))

    run(body)
