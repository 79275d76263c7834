"""The local runtime's sandbox: on by default under both launch paths, with what an agent
needs; a bare command still stops at SIGTERM though it is its namespace's pid 1; strict mode
refuses an agent this host cannot confine, naming the missing feature, and leaves nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import time
from pathlib import Path

import pytest

from corral.domain.errors import Unavailable
from corral.runtime.base import Phase
from corral.runtime.local import LocalProcessRuntime
from corral.runtime.local.confinement import Confinement, host_report
from corral.runtime.sandbox import SandboxMode
from tests.runtime import agents
from tests.runtime.contract import READY
from tests.runtime.pidns import agent_pid, confined
from tests.support import eventually

BARE = """
    print(READY, AGENT, flush=True)
    signal.pause()
"""
PROBE = """
    import json
    info = {"uid": os.getuid(), "pid": os.getpid(), "creds": open(os.environ["CORRAL_CREDS_FILE"]).read()}
    try:
        os.listdir(os.path.dirname(os.environ["CORRAL_CREDS_FILE"]))
        info["agent_dir"] = "listed"
    except OSError as exc:
        info["agent_dir"] = type(exc).__name__
    print(READY, AGENT, json.dumps(info), flush=True)
    signal.pause()
"""


async def _ready(rt: LocalProcessRuntime, agent_id: str) -> str:
    async def logged() -> str:
        text = await rt.logs("acme", agent_id)
        return text if READY in text else ""

    return await eventually(logged, timeout=30, message=f"{agent_id} ready")


@pytest.fixture(autouse=True)
def _need_a_sandbox() -> None:
    if host_report().level != "full":
        pytest.skip(f"this host cannot give every layer: {host_report().describe()}")


async def test_by_default_an_agent_is_confined_strictly(
    runtime: LocalProcessRuntime, launch: str
) -> None:
    status = await runtime.start(agents.spec("acme", "agent-box", PROBE, creds="NATS creds"))
    assert status.detail["sandbox"] == "strict" and confined(runtime)
    logs = await _ready(runtime, "agent-box")
    seen = json.loads(logs.split(READY, 1)[1].split(None, 1)[1].strip().splitlines()[0])
    assert seen["pid"] == 1 and seen["creds"] == "NATS creds"
    assert seen["agent_dir"] == "PermissionError"  # its creds, not the directory they are in
    paths = runtime.paths("acme", "agent-box")
    if os.geteuid() == 0:  # its org's own uid, never root
        assert seen["uid"] != 0 and paths.workspace.stat().st_uid == seen["uid"]
        assert stat.S_IMODE(paths.workspace.stat().st_mode) == 0o700
    # pid 1 of its own PID namespace: made by its org's fork server as it forked it (as root),
    # or else by a waiter, which is then the pid tracked
    assert status.pid is not None
    waiter = launch != "zygote" or os.geteuid() != 0
    assert (agent_pid(status.pid) != status.pid) is waiter


async def test_a_command_without_a_sigterm_handler_stops_at_sigterm(
    runtime: LocalProcessRuntime,
) -> None:
    """pid 1 of a namespace gets no signal it has no handler for: the waiter ends it, fast,
    and the exit reads as SIGTERM, as outside a namespace."""
    await runtime.start(agents.spec("acme", "agent-bare", BARE))
    await _ready(runtime, "agent-bare")
    started = time.monotonic()
    await runtime.stop("acme", "agent-bare", grace=60)
    assert time.monotonic() - started < 30  # not the grace period's SIGKILL
    status = await runtime.status("acme", "agent-bare")
    assert status.phase is Phase.EXITED and status.exit_code == 143, status


async def test_strict_refuses_what_this_host_cannot_confine_and_leaves_nothing(
    tmp_path: Path, launch: str
) -> None:
    report = dataclasses.replace(host_report(), landlock_abi=3)  # as on an older kernel
    strict = Confinement(SandboxMode.STRICT, report)
    root = tmp_path / "data"
    async with LocalProcessRuntime(root, sandbox=strict) as rt:
        with pytest.raises(Unavailable, match="network") as refused:
            await rt.start(agents.spec("acme", "agent-no"))
        assert refused.value.details["sandbox"] == "network"
        paths = rt.paths("acme", "agent-no")
        assert not paths.agent_dir.exists()
        assert not any(d.exists() for d in rt.limiter.group_dirs("acme", "agent-no").values())
        assert (await rt.status("acme", "agent-no")).phase is Phase.ABSENT
        best = Confinement(SandboxMode.BEST_EFFORT, report)
        assert best.level() == "best-effort (missing: network, scoping)"


async def test_off_runs_agents_unconfined_and_says_so(tmp_path: Path, launch: str) -> None:
    async with LocalProcessRuntime(tmp_path / "data", sandbox="off") as rt:
        status = await rt.start(agents.spec("acme", "agent-open"))
        assert status.detail["sandbox"] == "off" and not confined(rt)
        assert "SANDBOX OFF" in rt.sandbox.describe()
        assert status.pid is not None and agent_pid(status.pid) == status.pid
        await rt.stop("acme", "agent-open", grace=2)
