"""``corral agent dev my_agent.py``: run an agent file against a throwaway local platform.

For writing an agent: the file is run as a provisioned agent would be (its own process, the
bus, its credentials, the platform's task messages) by an embedded control plane in a
temporary data dir, removed at the end. With ``--payload`` one task is sent, its result
printed and everything stopped (exit 0 if it completed: usable in an agent's own tests);
without, the platform stays up and prints how to send it tasks until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from corral.cli.context import run
from corral.cli.loop import run_loop
from corral.cli.output import console
from corral.client import AsyncClient, TaskDetail
from corral.domain.errors import InvalidInput, Unavailable
from corral.settings import Settings

__all__ = ["dev"]

ORG = "dev"


@click.command("dev")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--role", default="dev", show_default=True, help="The agent's role.")
@click.option("--slots", type=int, default=1, show_default=True, help="Tasks it runs at once.")
@click.option(
    "--payload", help="Send one task with this JSON payload (@FILE, - for stdin), then stop."
)
@click.option("--timeout", type=float, default=300.0, show_default=True, help="For that task.")
@click.option(
    "--python", "python", default=sys.executable, show_default=True, help="Interpreter to run it."
)
@click.option(
    "--sandbox",
    type=click.Choice(["strict", "best-effort", "off"]),
    default="off",
    show_default=True,
    help="How the agent is confined (off: it reads its own directory as is; strict and "
    "best-effort as `corral up` confines agents).",
)
@click.pass_context
def dev(
    ctx: click.Context,
    file: Path,
    role: str,
    slots: int,
    payload: str | None,
    timeout: float,
    python: str,
    sandbox: str,
) -> None:
    """Run the agent in FILE on a throwaway local platform (see `--payload`)."""
    from corral.cli.tasks import read_payload

    as_json = bool(ctx.obj and ctx.obj.as_json)

    def body() -> None:
        if not file.is_file():
            raise InvalidInput(f"agent file {file} does not exist or is not a file")
        task_payload = None if payload is None else read_payload(payload)
        if task_payload is not None and not isinstance(task_payload, dict):
            raise InvalidInput("--payload must be a JSON object")
        tmp = Path(tempfile.mkdtemp(prefix="corral-dev-"))
        settings = Settings(
            data_dir=tmp,
            port=0,
            heartbeat_seconds=1.0,
            sandbox=sandbox,
            sandbox_read_only=(str(file.resolve().parent),),
        )
        try:
            done = run_loop(
                _dev(
                    settings,
                    [python, str(file.resolve())],
                    role=role,
                    slots=slots,
                    payload=task_payload,
                    timeout=timeout,
                    as_json=as_json,
                )
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if done is not None and done.state != "completed":
            raise SystemExit(1)

    run(body)


async def _dev(
    settings: Settings,
    command: list[str],
    *,
    role: str,
    slots: int,
    payload: dict[str, Any] | None,
    timeout: float,
    as_json: bool,
) -> TaskDetail | None:
    from corral.api.server import running  # the server's imports are heavy: only here

    async with running(settings) as srv, AsyncClient(srv.url, srv.platform.new_admin_key) as api:
        await api.create_org(ORG)
        agent = await api.provision_agent(
            ORG, name="dev", role=role, command=command, slots=slots, wait=True
        )
        if payload is not None:
            task = await api.submit_task(ORG, agent=agent.id, payload=payload)
            try:
                done = await api.wait_task(ORG, task.id, timeout=timeout, interval=0.05)
            except Unavailable:
                console.print(await api.agent_logs(ORG, agent.id, tail=50), markup=False)
                raise
            _show(done, as_json)
            if done.state != "completed":
                logs = await api.agent_logs(ORG, agent.id, tail=50)
                click.echo(f"the agent's log:\n{logs}", err=True)
            return done
        _banner(srv.url, srv.platform.new_admin_key or "", agent.id, role)
        await _until_interrupted()
        return None


def _show(done: TaskDetail, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(done.to_wire(), indent=2, default=str))
        return
    console.print(f"{done.id}: {done.state}")
    if done.result is not None:
        console.print_json(json.dumps(done.result))


def _banner(url: str, key: str, agent_id: str, role: str) -> None:
    console.print(f"agent {agent_id} is running on a throwaway platform at {url}", markup=False)
    console.print("in another terminal:", markup=False)
    console.print(f"  export CORRAL_URL={url} CORRAL_API_KEY={key}", markup=False)
    console.print(
        f"  corral task submit {ORG} --role {role} --payload '{{}}' --watch", markup=False
    )
    console.print(f"  corral agent logs {ORG} {agent_id}", markup=False)
    console.print("Ctrl-C stops the platform and removes its data", markup=False)


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
