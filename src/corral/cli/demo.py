"""``corral demo``: the platform's main job, start to finish, on the embedded default."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import click
from rich.console import Console

from corral.api.server import running
from corral.cli.client import ApiClient
from corral.cli.main import run
from corral.cli.orgs import quota_table
from corral.domain.errors import CorralError
from corral.settings import Settings

__all__ = ["demo"]

console = Console()


class DemoFailed(CorralError):
    code = "demo_failed"
    exit_code = 1


def check(ok: bool, claim: str) -> None:
    if not ok:
        raise DemoFailed(f"demo step did not do what it claims: {claim}")
    console.print(f"  [green]✓[/] {claim}")


async def _story(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, port=0)
    async with running(settings) as srv:
        console.rule("[bold]Corral demo")
        console.print(f"control plane up at {srv.url}, data in a temporary directory")
        admin = ApiClient(srv.url, srv.platform.new_admin_key)
        try:
            await asyncio.to_thread(_orgs_chapter, admin)
        finally:
            admin.close()
    console.rule("done: everything stopped")


def _orgs_chapter(admin: ApiClient) -> None:
    console.rule("1. organizations on each plan")
    for name, plan in (("acme", "enterprise"), ("globex", "standard"), ("initech", "free")):
        org = admin.post("/v1/orgs", json={"name": name, "plan": plan})
        check(
            org["namespace"] == f"org-{name}", f"{name} created on {plan} in namespace org-{name}"
        )
        usage = admin.get(f"/v1/orgs/{name}/usage")
        console.print(quota_table(usage["quota"], f"{name} ({plan})"))
    try:
        admin.post("/v1/orgs", json={"name": "Bad_Name!", "plan": "standard"})
        check(False, "a bad name is refused")
    except CorralError as exc:
        check("DNS-1123" in exc.message, f"a bad name is refused: {exc.message}")


@click.command()
@click.option("--keep", is_flag=True, help="Keep the temporary data dir for inspection.")
def demo(keep: bool) -> None:
    """Run the whole story on a throwaway embedded platform and tear it down."""

    def body() -> None:
        tmp = tempfile.mkdtemp(prefix="corral-demo-")
        asyncio.run(_story(Path(tmp)))
        if keep:
            console.print(f"data dir kept at {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    run(body)
