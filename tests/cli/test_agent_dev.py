"""`corral agent dev FILE`: an agent file run on a throwaway local platform, one task sent to
it, its result printed, and nothing left behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import CORRAL, corral_env

AGENT = """
from corral.sdk import Agent

agent = Agent.from_env()


@agent.task
async def handle(ctx):
    if ctx.payload.get("fail"):
        print("about to fail on purpose", flush=True)
        raise RuntimeError("told to fail")
    return {"doubled": ctx.payload["n"] * 2}


if __name__ == "__main__":
    agent.run()
"""


def dev(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    return subprocess.run(
        [*CORRAL, *args],
        env=corral_env() | {"TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


@pytest.mark.timeout(300)
def test_an_agent_file_answers_a_task_and_nothing_is_left(tmp_path: Path) -> None:
    (tmp_path / "agent_dir").mkdir()
    (tmp_path / "agent_dir" / "my_agent.py").write_text(AGENT)
    r = dev(tmp_path, "agent", "dev", "agent_dir/my_agent.py", "--payload", '{"n": 21}', "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["state"] == "completed" and done["result"] == {"doubled": 42}
    assert list((tmp_path / "tmp").iterdir()) == []  # the throwaway data dir is gone


@pytest.mark.timeout(300)
def test_a_failing_handler_exits_1_with_the_agents_log(tmp_path: Path) -> None:
    (tmp_path / "my_agent.py").write_text(AGENT)
    r = dev(
        tmp_path,
        "agent",
        "dev",
        "my_agent.py",
        "--payload",
        '{"fail": true}',
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert ": failed" in r.stdout and "told to fail" in r.stdout
    assert "about to fail on purpose" in r.stderr


def test_a_missing_agent_file_is_one_line(tmp_path: Path) -> None:
    r = dev(tmp_path, "agent", "dev", "nope.py", "--payload", "{}")
    assert (
        r.returncode == 2
        and r.stderr == "error: agent file nope.py does not exist or is not a file\n"
    )
