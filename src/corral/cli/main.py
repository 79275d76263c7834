"""``corral``: the command line entry point."""

from __future__ import annotations

from pathlib import Path

import click

from corral.cli.context import Context, pass_ctx, run

__all__ = ["Context", "main", "pass_ctx", "run"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="CORRAL_URL", help="API base URL (default: the local data dir's).")
@click.option("--api-key", envvar="CORRAL_API_KEY", help="API key (default: the local admin key).")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    envvar="CORRAL_DATA_DIR",
    help="Data directory of a local control plane (default ~/.corral).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.version_option(package_name="corral")
@click.pass_context
def cli(
    ctx: click.Context, url: str | None, api_key: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Corral: run AI agents for many organizations, each in its own boundary."""
    ctx.obj = Context(url, api_key, data_dir, as_json)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from corral.cli import agents, demo, isolation, k8s, models, orgs, roles, secrets, tasks, up

    cli.add_command(up.up)
    cli.add_command(demo.demo)
    cli.add_command(orgs.org)
    cli.add_command(agents.agent)
    cli.add_command(roles.role)
    cli.add_command(tasks.task)
    cli.add_command(k8s.k8s)
    for command in (secrets.secret, secrets.grant, secrets.audit):
        cli.add_command(command)
    cli.add_command(isolation.check_isolation)
    cli.add_command(models.model)
    cli.add_command(models.budget)


_register()


def main() -> None:
    cli(prog_name="corral")
