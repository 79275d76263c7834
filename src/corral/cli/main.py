"""``corral``: the command line entry point."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from corral.cli.client import ApiClient, resolve_target
from corral.domain.errors import CorralError

__all__ = ["Context", "main", "pass_ctx", "run"]


class Context:
    def __init__(self, url: str | None, key: str | None, data_dir: Path | None, as_json: bool):
        self._url, self._key, self.data_dir, self.as_json = url, key, data_dir, as_json
        self._client: ApiClient | None = None

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            url, key = resolve_target(self._url, self._key, self.data_dir)
            self._client = ApiClient(url, key)
        return self._client

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            human()


pass_ctx = click.make_pass_decorator(Context)


def run(fn: Callable[[], None]) -> None:
    """Run a command body; an error becomes one line on stderr and its exit code."""
    try:
        fn()
    except CorralError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)


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


def _register() -> None:
    from corral.cli import agents, demo, k8s, orgs, secrets, tasks, up

    cli.add_command(up.up)
    cli.add_command(demo.demo)
    cli.add_command(orgs.org)
    cli.add_command(agents.agent)
    cli.add_command(tasks.task)
    cli.add_command(k8s.k8s)
    for command in (secrets.secret, secrets.grant, secrets.audit):
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="corral")
