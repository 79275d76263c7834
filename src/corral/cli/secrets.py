"""``corral secret ...``, ``corral grant ...`` and ``corral audit``: an org's vault.

A secret's value is read from stdin (hidden prompt on a terminal) or a file, never from an
argument: arguments end up in shell history and in every process listing. It is sent as
base64, byte for byte, and no command ever prints one.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any, BinaryIO

import click
from rich.markup import escape
from rich.table import Table

from corral.cli.context import Context, pass_ctx, run
from corral.cli.output import console
from corral.domain.errors import InvalidInput

__all__ = ["audit", "grant", "secret"]


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> Table:
    table = Table()
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def _read_value(file: Path | None) -> bytes:
    if file is not None:
        try:
            return file.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read {file}: {exc.strerror or exc}") from None
    stdin: BinaryIO = sys.stdin.buffer
    if stdin.isatty():
        text: str = click.prompt(
            "value", hide_input=True, confirmation_prompt=True, err=True, show_default=False
        )
        return text.encode("utf-8")
    data: bytes = stdin.read()
    return data


# -- secrets ----------------------------------------------------------------------------------


@click.group()
def secret() -> None:
    """Store, list and delete an organization's secrets (values are write-only)."""


@secret.command("set")
@click.argument("org")
@click.argument("name")
@click.option(
    "--file",
    "file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the value from this file instead of stdin.",
)
@pass_ctx
def set_(ctx: Context, org: str, name: str, file: Path | None) -> None:
    """Store a new version of secret NAME in ORG.

    The value comes from stdin, byte for byte (a trailing newline is kept: use printf '%s'),
    or from --file; on a terminal it is prompted for without echo. It is never an argument.
    """

    def body() -> None:
        value = _read_value(file)
        if not value:
            source = file if file is not None else "stdin"
            raise InvalidInput(f"no value: {source} is empty")
        encoded = base64.b64encode(value).decode("ascii")
        data = ctx.client.request(
            "PUT", f"/v1/orgs/{org}/secrets/{name}", json={"valueBase64": encoded}
        )
        ctx.emit(
            data,
            lambda: console.print(
                f"stored secret {escape(data['name'])} version {data['version']} in {escape(org)}",
                highlight=False,
            ),
        )

    run(body)


@secret.command("list")
@click.argument("org")
@pass_ctx
def list_secrets(ctx: Context, org: str) -> None:
    """List ORG's secrets: names, versions and times, never values."""

    def body() -> None:
        data = ctx.client.get(f"/v1/orgs/{org}/secrets")
        rows = [
            [s["name"], str(s["version"]), s["createdAt"], s["updatedAt"]] for s in data["secrets"]
        ]
        ctx.emit(
            data, lambda: console.print(_table(("name", "version", "created", "updated"), rows))
        )

    run(body)


@secret.command("show")
@click.argument("org")
@click.argument("name")
@pass_ctx
def show_secret(ctx: Context, org: str, name: str) -> None:
    """Show one secret's version and times (not its value)."""

    def body() -> None:
        s = ctx.client.get(f"/v1/orgs/{org}/secrets/{name}")
        row = [s["name"], str(s["version"]), s["createdAt"], s["updatedAt"]]
        ctx.emit(s, lambda: console.print(_table(("name", "version", "created", "updated"), [row])))

    run(body)


@secret.command("delete")
@click.argument("org")
@click.argument("name")
@pass_ctx
def delete_secret(ctx: Context, org: str, name: str) -> None:
    """Delete secret NAME of ORG with all its versions."""

    def body() -> None:
        ctx.client.request("DELETE", f"/v1/orgs/{org}/secrets/{name}")
        ctx.emit(
            {"deleted": name},
            lambda: console.print(f"deleted secret {escape(name)}", highlight=False),
        )

    run(body)


# -- grants -----------------------------------------------------------------------------------


def _grant_row(g: dict[str, Any]) -> list[str]:
    subject = f"agent {g['agent']}" if g.get("agent") else f"role {g['role']}"
    return [g["id"], g["secret"], subject, g["createdAt"]]


@click.group()
def grant() -> None:
    """Let a role or one agent read secrets, by name or glob (agent-ssh-*)."""


@grant.command("add")
@click.argument("org")
@click.option("--secret", "pattern", required=True, help="A secret name or a glob: agent-ssh-*.")
@click.option("--role", help="Every agent of this role.")
@click.option("--agent", "agent_id", help="This one agent (its id).")
@pass_ctx
def add_grant(ctx: Context, org: str, pattern: str, role: str | None, agent_id: str | None) -> None:
    """Allow reading the secrets PATTERN names to --role or --agent (exactly one)."""

    def body() -> None:
        if (role is None) == (agent_id is None):
            raise InvalidInput("give exactly one of --role or --agent")
        payload: dict[str, str] = {"secret": pattern}
        if role is not None:
            payload["role"] = role
        if agent_id is not None:
            payload["agent"] = agent_id
        data = ctx.client.post(f"/v1/orgs/{org}/grants", json=payload)
        ctx.emit(
            data,
            lambda: console.print(_table(("id", "secret", "to", "created"), [_grant_row(data)])),
        )

    run(body)


@grant.command("list")
@click.argument("org")
@pass_ctx
def list_grants(ctx: Context, org: str) -> None:
    """List ORG's grants."""

    def body() -> None:
        data = ctx.client.get(f"/v1/orgs/{org}/grants")
        rows = [_grant_row(g) for g in data["grants"]]
        ctx.emit(data, lambda: console.print(_table(("id", "secret", "to", "created"), rows)))

    run(body)


@grant.command("remove")
@click.argument("org")
@click.argument("grant_id")
@pass_ctx
def remove_grant(ctx: Context, org: str, grant_id: str) -> None:
    """Revoke grant GRANT_ID of ORG."""

    def body() -> None:
        ctx.client.request("DELETE", f"/v1/orgs/{org}/grants/{grant_id}")
        ctx.emit(
            {"removed": grant_id},
            lambda: console.print(f"removed grant {escape(grant_id)}", highlight=False),
        )

    run(body)


# -- audit ------------------------------------------------------------------------------------


@click.command()
@click.argument("org")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--before", type=click.IntRange(min=0), help="Older than this entry id (paging).")
@pass_ctx
def audit(ctx: Context, org: str, limit: int, before: int | None) -> None:
    """Show ORG's vault audit log, newest first: writes, grants, reads and denials."""

    def body() -> None:
        params: dict[str, int] = {"limit": limit}
        if before is not None:
            params["before"] = before
        data = ctx.client.get(f"/v1/orgs/{org}/audit", params=params)
        rows = [
            [
                str(e["id"]),
                e["at"],
                e["actor"],
                e["action"],
                e["target"],
                "allowed" if e["allowed"] else "DENIED",
                e["detail"],
            ]
            for e in data["entries"]
        ]

        def human() -> None:
            columns = ("id", "at", "actor", "action", "target", "outcome", "detail")
            console.print(_table(columns, rows))
            if data.get("next") is not None:
                click.echo(f"older entries: --before {data['next']}", err=True)

        ctx.emit(data, human)

    run(body)
