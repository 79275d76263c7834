"""A hostile tenant on a real platform: org A, with nothing but its own API key, provisions a
``--command`` agent that attacks org B's agents and the platform; every attempt is refused by
the sandbox (on by default), under both launch paths (the fork server, and exec with the fork
server off), and the agent still does what an agent must: its own workspace and credentials, a
secret granted to it, tasks over the bus.

File modes are opened up on everything attacked (the data directory is in a directory every
uid may enter, its files world-readable), so each refusal is the sandbox's. The same agent with
the sandbox off crosses: that proves the attempts are real and that this suite can fail.

As an ordinary user: skipped when the interpreter lives where an ordinary user cannot enter
(the control plane cannot run as one); the sandbox's own suite (``tests/runtime/sandbox``)
covers the user-namespace path with a hostile agent under both launch paths, and the
independent suite (``test_hostile_fresh.py``, ordinary-user) runs a whole ``corral up`` as an
unprivileged uid on the system's interpreter of the same version and attacks it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from corral.api.server import running
from tests.e2e.conftest import Live, live_settings
from tests.runtime.pidns import agent_pid
from tests.support import eventually

REPO = Path(__file__).resolve().parents[2]
SECRET = "ghp_hostile-suite-granted-value"
# what crosses with the sandbox off (as root): files, listings, other processes' /proc, ports
UNCONFINED_CROSSINGS = {
    "read_b_workspace_file",
    "read_b_creds",
    "read_admin_key",
    "read_master_key",
    "read_corral_db",
    "read_nats_server_conf",
    "write_b_workspace",
    "list_data_dir",
    "list_b_workspace",
    "see_victim_pids",
    "environ_b_agent",
    "environ_control_plane",
    "connect_api",
    "connect_nats_monitoring",
}


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A data directory in a directory every uid may enter (pytest's own are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="corral-hostile-e2e-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=[("fork", "auto"), ("exec", "auto"), ("exec", "off")], ids=str)
async def platform(
    request: pytest.FixtureRequest, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Live, str, str]]:
    """A running platform with the NATS monitoring port open (one more thing to attack);
    agents start from the fork server (``fork``) or are exec'd (``exec``)."""
    launch, sandbox = request.param
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))  # for the module
    settings = live_settings(
        data_root / "data",
        nats_monitoring=True,
        fork_server=launch == "fork",
        sandbox=sandbox,
        auto_provision=False,
    )
    async with (
        running(settings) as srv,
        httpx.AsyncClient(
            base_url=srv.url,
            headers={"Authorization": f"Bearer {srv.platform.new_admin_key}"},
            timeout=30,
        ) as admin,
    ):
        yield Live(srv, admin, data_root / "data"), launch, sandbox


def _open_up(data: Path, targets: list[Path]) -> None:
    """World-readable targets and world-enterable directories down to them: file modes
    refuse nothing here."""
    for target in targets:
        for parent in [*reversed(target.relative_to(data).parents), target.relative_to(data)]:
            path = data / parent
            if path.is_dir():
                path.chmod(path.stat().st_mode | 0o777)
            elif path.exists():
                path.chmod(path.stat().st_mode | stat.S_IROTH | stat.S_IWOTH)


async def _agent(client: httpx.AsyncClient, org: str, name: str, **extra: Any) -> dict[str, Any]:
    r = await client.post(f"/v1/orgs/{org}/agents", json={"name": name, "wait": True, **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def _task(live: Live, client: httpx.AsyncClient, org: str, **body: Any) -> dict[str, Any]:
    r = await client.post(f"/v1/orgs/{org}/tasks", json=body)
    assert r.status_code == 201, r.text
    return await live.wait_task(org, r.json()["id"])


async def test_a_hostile_agent_crosses_nothing_and_still_works(
    platform: tuple[Live, str, str],
) -> None:
    live, launch, sandbox = platform
    p = live.platform
    data = live.data_dir
    _, alpha = await live.org("alpha")
    _, beta = await live.org("beta")
    async with alpha, beta:
        b_agent = await _agent(beta, "beta", "victim")
        b_status = await p.runtime.status("beta", b_agent["id"])
        assert b_status.pid is not None
        b_dir = data / "agents" / "orgs" / "beta" / "agents" / b_agent["id"]
        (b_dir / "workspace" / "plans.txt").write_text("beta's plans")
        r = await alpha.put("/v1/orgs/alpha/secrets/token", json={"value": SECRET})
        assert r.status_code in (200, 201), r.text

        nats_auth = sorted(f for f in (data / "nats" / "auth").rglob("*") if f.is_file())
        reads = {
            "b_workspace_file": b_dir / "workspace" / "plans.txt",
            "b_creds": b_dir / "agent.creds",
            "b_pidfile": b_dir / "agent.pid",
            "admin_key": data / "admin.key",
            "master_key": data / "master.key",
            "corral_db": data / "corral.db",
            "nats_server_conf": data / "nats" / "server" / "server.conf",
            **{f"nats_auth_{i}": f for i, f in enumerate(nats_auth)},
        }
        writes = {"b_workspace": b_dir / "workspace" / "planted.txt", "data_dir": data / "x"}
        lists = {"data_dir": data, "b_workspace": b_dir / "workspace", "orgs": data / "agents"}
        _open_up(data, [*reads.values(), b_dir / "workspace"])
        assert all(f.exists() for f in reads.values()), reads

        victims = {
            "b_waiter": b_status.pid,
            "b_agent": agent_pid(b_status.pid),
            "control_plane": os.getpid(),
            "nats_server": p.nats.pid,
        }
        if (zygote := p.runtime.zygote_pid("beta")) is not None:
            victims["b_fork_server"] = zygote
        assert launch == "exec" or "b_fork_server" in victims
        bus_port = urlsplit(p.bus.url).port
        monitor = urlsplit(p.nats.monitor_url).port
        config = {
            "read": {k: str(v) for k, v in reads.items()},
            "write": {k: str(v) for k, v in writes.items()},
            "list": {k: str(v) for k, v in lists.items()},
            "pids": victims if sandbox != "off" else {"b_agent": victims["b_agent"],
                                                       "control_plane": os.getpid()},
            "ports": {"api": urlsplit(live.server.url).port, "nats_monitoring": monitor},
            "bus_port": bus_port,
        }  # fmt: skip
        if sandbox == "off":  # unconfined, it would really trace and stop us: no such tries
            config["gentle"] = True
        command = [sys.executable, "-m", "tests.e2e.hostile_agent", json.dumps(config)]
        a_agent = await _agent(alpha, "alpha", "intruder", command=command)
        record = data / "agents" / "orgs" / "alpha" / "agents" / a_agent["id"] / "workspace"
        text = await eventually(
            lambda: (record / "hostile.json").is_file() and (record / "hostile.json").read_text(),
            timeout=60,
            message="the hostile agent's report",
        )
        outcome: dict[str, dict[str, Any]] = json.loads(str(text))
        crossed = {k: v["detail"] for k, v in outcome.items() if v["ok"] and k != "whoami"}
        works = {k for k in outcome if k.startswith("works_")}
        assert works == {"works_own_workspace", "works_own_creds", "works_bus_port", "works_tmp"}

        if sandbox == "off":
            assert crossed.keys() >= UNCONFINED_CROSSINGS, UNCONFINED_CROSSINGS - crossed.keys()
            return

        assert set(crossed) == works, {k: v for k, v in crossed.items() if k not in works}
        uid = int(outcome["whoami"]["detail"].split()[0])
        if os.geteuid() == 0:  # its organization's own uid, recorded in the store
            uids = await p.orgs.sandbox_uids()
            assert (
                uid == uids[(await p.orgs.get("alpha")).id] != uids[(await p.orgs.get("beta")).id]
            )
            assert (record).stat().st_uid == uid and stat.S_IMODE(record.stat().st_mode) == 0o700
        assert (b_dir / "workspace" / "plans.txt").read_text() == "beta's plans"
        assert not (b_dir / "workspace" / "planted.txt").exists()

        # still an agent: a granted secret, and tasks over the bus
        r = await alpha.post("/v1/orgs/alpha/grants", json={"secret": "token", "role": "general"})
        assert r.status_code == 201, r.text
        done = await _task(
            live, alpha, "alpha", agent=a_agent["id"], payload={"op": "secret", "name": "token"}
        )
        assert done["state"] == "completed", done
        assert done["result"]["sha256"] == hashlib.sha256(SECRET.encode()).hexdigest()
        echo = await _task(live, alpha, "alpha", agent=a_agent["id"], payload={"op": "echo"})
        assert echo["state"] == "completed", echo
        shown = (await alpha.get(f"/v1/orgs/alpha/agents/{a_agent['id']}")).json()
        assert shown["sandbox"] == "strict"
        assert (await p.runtime.status("beta", b_agent["id"])).pid == b_status.pid  # unharmed


def test_an_ordinary_users_control_plane_is_covered_or_skipped_with_the_reason() -> None:
    """The platform as an ordinary user needs an interpreter such a user can run."""
    real = os.path.realpath(sys.executable)
    blocked = [str(p) for p in Path(real).parents if not os.stat(p).st_mode & stat.S_IXOTH]
    if os.geteuid() != 0:
        pytest.skip("these tests already run as an ordinary user: the suite above is that run")
    if blocked:
        pytest.skip(
            f"the interpreter {real} lies under {blocked[-1]}, which an ordinary user cannot "
            "enter, so no control plane can run as one here; the sandbox's own hostile suite "
            "covers the user-namespace launch path"
        )
    pytest.skip(
        "an ordinary user's control plane runs in tests/e2e/test_hostile_fresh.py "
        "(ordinary-user): a fresh corral up as an unprivileged uid, attacked the same way"
    )
