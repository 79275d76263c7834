"""``corral model ...`` and ``corral budget ...``: an organization's models for the gateway,
its metered usage and its period budget.

A model's provider key is named by secret (``--key-secret``): store it first with ``corral
secret set``; it never appears on a command line, in an answer or in an agent's environment.
Prices are dollars per million tokens.
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from corral.cli.context import Context, pass_ctx, run
from corral.cli.output import console
from corral.domain.errors import InvalidInput

__all__ = ["budget", "model"]


def _table(columns: tuple[str, ...], rows: list[list[str]], title: str | None = None) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def _model_row(m: dict[str, Any]) -> list[str]:
    return [
        m["name"],
        m["upstreamModel"],
        m["baseUrl"],
        m["keySecret"],
        m["priceIn"],
        m["priceOut"],
    ]


_MODEL_COLUMNS = ("name", "upstream model", "base URL", "key secret", "$/Mtok in", "$/Mtok out")


@click.group()
def model() -> None:
    """Declare the models an organization's agents may call through the gateway."""


@model.command("add")
@click.argument("org")
@click.argument("name")
@click.option("--base-url", required=True, help="The upstream's OpenAI-compatible base URL.")
@click.option("--key-secret", required=True, help="The org's secret holding the provider key.")
@click.option("--upstream-model", help="The upstream's name for it (default: NAME).")
@click.option("--price-in", default="0", show_default=True, help="$ per million input tokens.")
@click.option("--price-out", default="0", show_default=True, help="$ per million output tokens.")
@pass_ctx
def add(
    ctx: Context,
    org: str,
    name: str,
    base_url: str,
    key_secret: str,
    upstream_model: str | None,
    price_in: str,
    price_out: str,
) -> None:
    """Declare model NAME in ORG (or replace its declaration)."""

    def body() -> None:
        payload: dict[str, Any] = {
            "baseUrl": base_url,
            "keySecret": key_secret,
            "priceIn": price_in,
            "priceOut": price_out,
        }
        if upstream_model:
            payload["upstreamModel"] = upstream_model
        data = ctx.client.request("PUT", f"/v1/orgs/{org}/models/{name}", json=payload)
        ctx.emit(data, lambda: console.print(_table(_MODEL_COLUMNS, [_model_row(data)])))

    run(body)


@model.command("list")
@click.argument("org")
@pass_ctx
def list_models(ctx: Context, org: str) -> None:
    """List ORG's models."""

    def body() -> None:
        data = ctx.client.get(f"/v1/orgs/{org}/models")
        rows = [_model_row(m) for m in data["models"]]
        ctx.emit(data, lambda: console.print(_table(_MODEL_COLUMNS, rows)))

    run(body)


@model.command("remove")
@click.argument("org")
@click.argument("name")
@pass_ctx
def remove(ctx: Context, org: str, name: str) -> None:
    """Remove model NAME from ORG; its agents can no longer call it."""

    def body() -> None:
        ctx.client.request("DELETE", f"/v1/orgs/{org}/models/{name}")
        ctx.emit({"removed": name}, lambda: console.print(f"removed model {escape(name)}"))

    run(body)


@model.command("usage")
@click.argument("org")
@click.option("--period", help="A month, e.g. 2026-12 (default: this one).")
@pass_ctx
def usage(ctx: Context, org: str, period: str | None) -> None:
    """ORG's model calls, tokens and cost per role, model and agent."""

    def body() -> None:
        data = ctx.client.get(
            f"/v1/orgs/{org}/usage/models", params={"period": period} if period else None
        )

        def human() -> None:
            t = data["total"]
            console.print(
                f"{data['period']}: {t['calls']} calls, {t['tokens']} tokens, ${t['cost']} "
                f"(budget {data['budget']['tokens'] or 'unlimited'} tokens, "
                f"${data['budget']['cost'] or 'unlimited'})",
                highlight=False,
            )
            for group in ("role", "model", "agent"):
                rows = [
                    [r[group], str(r["calls"]), str(r["tokensIn"]), str(r["tokensOut"]), r["cost"]]
                    for r in data[f"by{group.title()}"]
                ]
                columns = (group, "calls", "tokens in", "tokens out", "cost $")
                console.print(_table(columns, rows, title=f"by {group}"))

        ctx.emit(data, human)

    run(body)


@click.group()
def budget() -> None:
    """An organization's model budget for the period (a calendar month)."""


def _show_budget(data: dict[str, Any]) -> None:
    b, t = data["budget"], data["total"]
    own = "its own" if data["ownBudget"] else "the plan's"
    console.print(
        f"{data['period']}: {t['tokens']} of {b['tokens'] or 'unlimited'} tokens, "
        f"${t['cost']} of ${b['cost'] or 'unlimited'} ({own} budget)",
        highlight=False,
    )


@budget.command("show")
@click.argument("org")
@pass_ctx
def show_budget(ctx: Context, org: str) -> None:
    """Show ORG's budget in force and what this period used of it."""

    def body() -> None:
        data = ctx.client.get(f"/v1/orgs/{org}/budget")
        ctx.emit(data, lambda: _show_budget(data))

    run(body)


@budget.command("set")
@click.argument("org")
@click.option("--tokens", type=int, help="Tokens per period (omit: unlimited).")
@click.option("--cost", help="Dollars per period (omit: unlimited).")
@click.option("--plan-default", is_flag=True, help="Go back to the plan's budget.")
@pass_ctx
def set_budget(
    ctx: Context, org: str, tokens: int | None, cost: str | None, plan_default: bool
) -> None:
    """Set ORG's own period budget."""

    def body() -> None:
        if plan_default and (tokens is not None or cost is not None):
            raise InvalidInput("give --plan-default alone, or --tokens and/or --cost")
        payload: dict[str, Any] = {"planDefault": plan_default}
        if tokens is not None:
            payload["tokens"] = tokens
        if cost is not None:
            payload["cost"] = cost
        data = ctx.client.request("PUT", f"/v1/orgs/{org}/budget", json=payload)
        ctx.emit(data, lambda: _show_budget(data))

    run(body)
