"""``corral``: the command line entry point.

Two things hold for every command, whatever its place on the line: ``--json`` may come before
or after the subcommand (``corral org list --json``), and a usage error (an unknown option, a
value not among the choices) is one line on stderr, ``error: ...``, with exit code 2, as the
platform's own errors are.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from corral.cli.context import Context, pass_ctx, run

JSON_FLAG = "--json"


class CorralGroup(click.Group):
    """The root group: ``--json`` is lifted from anywhere on the line (up to a ``--``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, lift_json_flag(args))


def lift_json_flag(args: Sequence[str]) -> list[str]:
    """``args`` with every ``--json`` before a ``--`` moved to the front, once."""
    end = args.index("--") if "--" in args else len(args)
    head = list(args[:end])
    if JSON_FLAG not in head:
        return list(args)
    return [JSON_FLAG, *(a for a in head if a != JSON_FLAG), *args[end:]]


__all__ = ["Context", "main", "pass_ctx", "run"]


@click.group(cls=CorralGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="CORRAL_URL", help="API base URL (default: the local data dir's).")
@click.option("--api-key", envvar="CORRAL_API_KEY", help="API key (default: the local admin key).")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    envvar="CORRAL_DATA_DIR",
    help="Data directory of a local control plane (default ~/.corral).",
)
@click.option(
    JSON_FLAG, "as_json", is_flag=True, help="Print JSON for scripts (anywhere on the line)."
)
@click.version_option(package_name="corral")
@click.pass_context
def cli(
    ctx: click.Context, url: str | None, api_key: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Corral: run AI agents for many organizations, each in its own boundary."""
    ctx.obj = Context(url, api_key, data_dir, as_json)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from corral.cli import (
        agents,
        demo,
        dev,
        isolation,
        k8s,
        models,
        orgs,
        roles,
        secrets,
        tasks,
        up,
    )

    cli.add_command(up.up)
    cli.add_command(demo.demo)
    cli.add_command(orgs.org)
    cli.add_command(agents.agent)
    cli.add_command(roles.role)
    agents.agent.add_command(dev.dev)
    cli.add_command(tasks.task)
    cli.add_command(k8s.k8s)
    for command in (secrets.secret, secrets.grant, secrets.audit):
        cli.add_command(command)
    cli.add_command(isolation.check_isolation)
    cli.add_command(models.model)
    cli.add_command(models.budget)


_register()


def main(args: Sequence[str] | None = None) -> None:
    """Run the CLI; click's own errors become the one-line form and their exit code."""
    try:
        code = cli.main(args=args, prog_name="corral", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see `{exc.ctx.command_path} --help`)"
        click.echo(f"error: {message}{hint}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
