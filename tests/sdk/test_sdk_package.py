"""corral-sdk on its own: built from sdk/, installed into an empty venv (its dependencies from
the package index), and an agent run from that venv by a real platform. The agent reports
where its SDK came from and that none of the platform's packages are there."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from corral.client import Client
from tests.support import corral_env, corral_up

ROOT = Path(__file__).resolve().parents[2]

AGENT = """
import importlib.util
import corral
from corral.sdk import Agent

agent = Agent.from_env()


@agent.task
async def handle(ctx):
    platform = [m for m in ("fastapi", "sqlalchemy", "uvicorn", "corral.api", "corral.control")
                if importlib.util.find_spec(m.split(".")[0]) and
                (m.split(".")[0] != "corral" or importlib.util.find_spec(m))]
    return {"corral": corral.__file__, "platform": platform, "echo": ctx.payload}


if __name__ == "__main__":
    agent.run()
"""


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


@pytest.mark.timeout(900)
def test_the_sdk_package_alone_runs_an_agent(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", ROOT / "sdk", "--no-deps", "-q", "-w", dist)
    (wheel,) = dist.glob("corral_sdk-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "corral/sdk/agent.py" in names and "corral/domain/messages.py" in names
    modules = {n.split("/")[1] for n in names if n.startswith("corral/") and n.count("/") > 1}
    assert modules == {"agents", "data", "domain", "sdk"}, modules  # nothing of the platform
    assert not [n for n in names if "__pycache__" in n]

    venv = tmp_path / "sdk" / "venv"  # agents may read under sdk/ (not the data dir)
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
    installed = run(python, "-m", "pip", "list", "--format=freeze").lower()
    assert "corral-sdk==0.1.0" in installed and "nats-py" in installed
    for platform_only in ("fastapi", "sqlalchemy", "uvicorn", "alembic", "pydantic"):
        assert platform_only not in installed, installed

    agent_file = tmp_path / "sdk" / "my_agent.py"
    agent_file.write_text(AGENT)
    env = corral_env() | {"CORRAL_SANDBOX_READ_ONLY": str(tmp_path / "sdk")}
    with corral_up(tmp_path / "data", env=env) as up:
        url = (up.data / "api.url").read_text().strip()
        with Client(url, (up.data / "admin.key").read_text().strip()) as admin:
            admin.create_org("acme")
            agent = admin.provision_agent(
                "acme",
                name="alone",
                role="alone",
                command=[str(python), str(agent_file)],
                wait=True,
            )
            task = admin.submit_task("acme", agent=agent.id, payload={"n": 1})
            done = admin.wait_task("acme", task.id, timeout=120)
    assert done.state == "completed", done
    assert done.result is not None
    assert done.result["corral"].startswith(str(venv)), done.result
    assert done.result["platform"] == [] and done.result["echo"] == {"n": 1}
