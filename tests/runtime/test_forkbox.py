"""As root, an organization's fork server runs as that organization's uid, in a box of its own:
what /proc says of it, and what it can reach (nothing of another organization, nothing of the
data directory but its own org's directory)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from corral.runtime.local import LocalProcessRuntime
from corral.runtime.local.confinement import host_report
from tests.runtime import agents
from tests.runtime.contract import READY
from tests.support import eventually

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="as an ordinary user there is no other uid to run a server as"
)


@pytest.fixture(autouse=True)
def _need_a_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    if host_report().level != "full":
        pytest.skip(f"this host cannot give every layer: {host_report().describe()}")
    monkeypatch.setattr(agents, "default_launch", "zygote")


def ids_of(pid: int) -> tuple[list[int], list[int]]:
    """Real, effective, saved and file-system uids and gids, as the host sees them."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        rows = {k: v.split() for k, v in (line.split(":", 1) for line in f)}
    return [int(u) for u in rows["Uid"]], [int(g) for g in rows["Gid"]]


async def _ready(rt: LocalProcessRuntime, org: str, agent_id: str) -> None:
    async def up() -> bool:
        return f"{READY} {agent_id}" in await rt.logs(org, agent_id)

    await eventually(up, timeout=30, message=f"{agent_id} ready")


async def test_an_orgs_fork_server_runs_as_the_orgs_uid_and_sees_only_its_org(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "master.key").write_text("platform secret")  # what a server must not see
    async with LocalProcessRuntime(data / "agents") as rt:
        a = await rt.start(agents.spec("acme", "agent-a"))
        b = await rt.start(agents.spec("globex", "agent-b"))
        await _ready(rt, "acme", "agent-a")
        await _ready(rt, "globex", "agent-b")
        uids = {}
        for org, status in (("acme", a), ("globex", b)):
            server = rt.zygote_pid(org)
            assert server is not None and status.pid is not None
            assert psutil.Process(status.pid).ppid() == server  # it forked the agent
            uid, gid = ids_of(status.pid)
            assert uid[0] != 0 and ids_of(server) == ([uid[0]] * 4, [gid[0]] * 4)
            # the process the runtime started, which waits for the server, is no root either
            assert ids_of(psutil.Process(server).ppid()) == ids_of(server)
            uids[org] = uid[0]
            # what the server sees of the data directory: its own org's directory, no more
            view = Path(f"/proc/{server}/root") / str(data).lstrip("/")
            assert sorted(p.name for p in view.iterdir()) == ["agents"]
            assert [p.name for p in (view / "agents" / "orgs").iterdir()] == [org]
            other = "globex" if org == "acme" else "acme"
            assert not (view / "agents" / "orgs" / other).exists()
            assert not (view / "master.key").exists()
            assert (view / "agents" / "orgs" / org / "agents" / status_agent(org)).is_dir()
        assert uids["acme"] != uids["globex"]
        # the org's directories: its group may pass through them, no one else
        org_dir = rt.paths("acme", "agent-a").org_dir
        info = org_dir.stat()
        assert info.st_uid == 0 and info.st_gid == uids["acme"] and info.st_mode & 0o777 == 0o710


def status_agent(org: str) -> str:
    return "agent-a" if org == "acme" else "agent-b"
