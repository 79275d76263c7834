"""``corral role ...``: declare an organization's roles from a YAML file, list, show, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from corral.cli.context import Context, pass_ctx, run
from corral.domain.errors import InvalidInput

__all__ = ["read_roles_file", "role"]

console = Console()


def read_roles_file(path: Path) -> dict[str, Any]:
    """The ``{roles: [...]}`` document of a YAML file, as the API takes it (quantities and
    environment values written as bare numbers become strings).

    Raises:
        InvalidInput: not readable, not YAML, or not a mapping with a list under ``roles``.
    """
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("roles"), list):
        raise InvalidInput(f"{path}: a roles file is a mapping with a list under 'roles'")
    for item in doc["roles"]:
        if not isinstance(item, dict):
            continue
        resources = item.get("resources")
        for kind in ("requests", "limits"):
            amounts = resources.get(kind) if isinstance(resources, dict) else None
            if isinstance(amounts, dict):
                for k, v in amounts.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        amounts[k] = str(v)
        env = item.get("env")
        if isinstance(env, dict):
            item["env"] = {
                k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                for k, v in env.items()
            }
    return doc


def _describe(change: dict[str, Any], *, dry_run: bool) -> str:
    verb = {"create": "created", "update": "updated", "unchanged": "unchanged"}[change["action"]]
    if dry_run:
        verb = {"create": "would be created", "update": "would change"}.get(
            change["action"], "unchanged"
        )
    lines = [f"role {change['name']} {verb}"]
    for field, fromto in change.get("changes", {}).items():
        lines.append(f"  {field}: {fromto['from']!r} -> {fromto['to']!r}")
    return "\n".join(lines)


def _table(roles: list[dict[str, Any]]) -> Table:
    table = Table()
    for col in ("name", "command", "slots", "agents min/max", "idle timeout", "version"):
        table.add_column(col)
    for r in roles:
        table.add_row(
            r["name"],
            " ".join(r["command"]) if r["command"] else "(built-in)",
            str(r["slots"]),
            f"{r['minAgents']}/{r['maxAgents']}",
            f"{r['idleTimeout']:g}s" if r["idleTimeout"] else "(plan's)",
            str(r["version"]),
        )
    return table


@click.group()
def role() -> None:
    """Declare what program serves each role and how it scales."""


@role.command("apply")
@click.argument("org")
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="YAML file with a list of roles under 'roles'.",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@pass_ctx
def apply(ctx: Context, org: str, path: Path, dry_run: bool) -> None:
    """Create or change ORG's roles as FILE declares them (all of them, or none on error)."""

    def body() -> None:
        doc = read_roles_file(path)
        params = {"dryRun": str(dry_run).lower()}
        data = ctx.client.request("PUT", f"/v1/orgs/{org}/roles", json=doc, params=params)
        ctx.emit(
            data,
            lambda: click.echo("\n".join(_describe(c, dry_run=dry_run) for c in data["changes"])),
        )

    run(body)


@role.command("list")
@click.argument("org")
@pass_ctx
def list_(ctx: Context, org: str) -> None:
    """List ORG's roles."""

    def body() -> None:
        data = ctx.client.get(f"/v1/orgs/{org}/roles")
        ctx.emit(data, lambda: console.print(_table(data["roles"])))

    run(body)


@role.command("show")
@click.argument("org")
@click.argument("name")
@pass_ctx
def show(ctx: Context, org: str, name: str) -> None:
    """Show a role's spec and its agents."""

    def body() -> None:
        data = ctx.client.get(f"/v1/orgs/{org}/roles/{name}")

        def human() -> None:
            console.print(_table([data]))
            for key in ("resources", "env", "taskDefaults", "secrets", "onDemand"):
                console.print(f"{key}: {data[key]}")
            budget = data.get("budget")
            if budget:
                tokens = budget["tokens"] if budget["tokens"] is not None else "unlimited"
                cost = f"${budget['cost']}" if budget["cost"] is not None else "unlimited"
                console.print(f"model budget per month: {tokens} tokens, {cost}")
            for a in data["agents"]:
                busy = " (busy)" if a.get("currentTask") else ""
                console.print(f"agent {a['name']} {a['id']} {a['state']}{busy}")

        ctx.emit(data, human)

    run(body)


@role.command("delete")
@click.argument("org")
@click.argument("name")
@pass_ctx
def delete(ctx: Context, org: str, name: str) -> None:
    """Forget a role: no agent is provisioned for it any more."""

    def body() -> None:
        ctx.client.request("DELETE", f"/v1/orgs/{org}/roles/{name}")
        ctx.emit({"deleted": name}, lambda: console.print(f"deleted role {name}"))

    run(body)
