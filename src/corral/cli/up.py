"""``corral up``: start the control plane in the foreground."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click
from pydantic import ValidationError

from corral.cli.context import run
from corral.cli.loop import run_loop, settle_heap
from corral.control import logs
from corral.domain.errors import InvalidInput
from corral.settings import Settings

if TYPE_CHECKING:
    from corral.api.server import RunningServer
    from corral.control.platform import Platform

__all__ = ["up"]


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where state lives.")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8470; 0 picks a free one).")
@click.option(
    "--runtime", type=click.Choice(["local", "kubernetes"]), default=None, help="Where agents run."
)
@click.option(
    "--sandbox",
    type=click.Choice(["strict", "best-effort", "off"]),
    default=None,
    help="How local agents are confined (default: strict where the kernel allows every "
    "layer, else best-effort; off is for development only).",
)
@click.pass_context
def up(
    ctx: click.Context,
    data_dir: Path | None,
    host: str | None,
    port: int | None,
    runtime: str | None,
    sandbox: str | None,
) -> None:
    """Start the control plane (API, bus, agents) and run until interrupted."""
    overrides: dict[str, object] = {}
    data_dir = data_dir or ctx.obj.data_dir
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if runtime is not None:
        overrides["runtime"] = runtime
    if sandbox is not None:
        overrides["sandbox"] = sandbox
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        bad = "; ".join(
            f"CORRAL_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        click.echo(f"error: bad setting: {bad}", err=True)
        raise SystemExit(InvalidInput.exit_code) from None
    logs.configure(settings.log_level, settings.log_format)

    def ready(srv: RunningServer) -> None:
        settle_heap()
        click.echo(f"corral is up at {srv.url} (data dir {settings.data_dir})")
        click.echo(f"model gateway for agents at {srv.gateway_url}/v1")
        confinement = srv.platform.sandbox
        if confinement is not None and confinement.enabled:
            click.echo(confinement.describe())
        elif confinement is not None:  # off: on stderr too, and hard to miss
            click.secho(confinement.describe(), err=True, fg="red", bold=True)
        if srv.platform.new_admin_key:
            click.echo(f"admin key (shown once; also in {settings.data_dir / 'admin.key'}):")
            click.echo(f"  {srv.platform.new_admin_key}")

    def leading(platform: Platform) -> None:
        settle_heap()
        click.echo(
            f"this replica leads now (epoch {platform.lease.epoch if platform.lease else 0})"
        )
        if platform.new_admin_key:
            click.echo(f"admin key (shown once; also in {settings.data_dir / 'admin.key'}):")
            click.echo(f"  {platform.new_admin_key}")

    async def main() -> None:
        from corral.api.server import serve  # the server's imports are heavy: only here

        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            if settings.ha:
                from corral.api.replicas import Replica

                async with Replica(settings, on_lead=leading) as replica:
                    click.echo(
                        f"corral replica {replica.name} is up at {replica.url} (standing by)"
                    )
                    await replica.wait()
            else:
                await serve(settings, on_ready=ready)
        click.echo("corral stopped")

    run(lambda: run_loop(main()))
