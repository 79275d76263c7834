"""The independent hostile suite: a fresh ``corral up`` as its own process, two organizations made
with the admin key, and from then on nothing but each org's own key through the public API.

Org B (the victim) runs the built-in agent and keeps a secret. Org A (the attacker) provisions its
own program (``fresh_hostile_agent.py``) with ``--command``, once exec'd and once forked by its
org's fork server, grants it a secret of its own and sends it a task; the program tries every
crossing it can (other org's files, the data directory and its keys, other processes and their
``/proc``, ptrace and its kin, mount, bpf, keyctl, perf_event_open, userfaultfd, the API's admin
routes with any key it found, the nats-server monitoring port, the fork servers, every listening
TCP port of the host, signals, abstract unix sockets) and answers with each outcome. The test
fails if any crossing succeeded, and if a control did not: its own workspace, tmp, credentials,
its granted secret and the bus.

What the test gives the attacker besides its task is what an attacker would scan for: the host
pids and paths of the victim, the platform and the fork servers, found here from outside (each
checked to exist, so that a refusal means something), and an abstract socket this test listens
on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support import CorralUp, corral_env, corral_up, wait_until

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
AGENT = HERE / "fresh_hostile_agent.py"
PROBES = HERE.parent / "probes"  # the outcome recorder, shared with the sandbox suite's agent
TERMINAL = {"completed", "blocked", "failed", "cancelled", "expired"}
#: what must be in every answer: a program that crashed early must not pass for a refused one
REQUIRED = (
    "read_admin.key",
    "read_master.key",
    "read_corral.db",
    "list_orgs",
    "see_other_pids",
    "mount",
    "bpf",
    "keyctl",
    "perf_event_open",
    "userfaultfd",
    "user_namespace",
    "runs_as_root",
    "bind_tcp",
)
CONTROLS = ("works_own_workspace", "works_tmp", "works_own_creds", "works_bus_port")

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the sandbox is Linux's (namespaces, Landlock, seccomp)"
)


@dataclass
class Fresh:
    up: CorralUp
    url: str
    admin_key: str
    python: str = sys.executable  # the platform's interpreter: a forked agent's command
    user: int | None = None  # the uid it runs as, when not this process's

    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, key: str) -> httpx.Client:
        made = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        self.clients.append(made)
        return made

    def org(self, name: str) -> tuple[str, httpx.Client]:
        with self.client(self.admin_key) as admin:
            r = admin.post("/v1/orgs", json={"name": name, "plan": "standard"})
        assert r.status_code == 201, r.text
        return name, self.client(r.json()["apiKey"])


ORDINARY_USER = 65534  # nobody: no home, no group, nothing of root's
SYSTEM_PYTHON = "/usr/bin/python3"


def ordinary_python() -> str | None:
    """An interpreter an ordinary user can run (this one lives under root's 0700 home), of
    this one's version, so that the platform's compiled dependencies load in it; or None."""
    if not os.path.exists(SYSTEM_PYTHON):
        return None
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        user=ORDINARY_USER,
        group=ORDINARY_USER,
        extra_groups=[],
        check=False,
    )
    return SYSTEM_PYTHON if probe.stdout.strip() == str(sys.version_info[:2]) else None


@pytest.fixture
def fresh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fresh]:
    """``corral up`` with its default sandbox, or the one a test names (indirect parameter);
    ``ordinary-user``: run by an unprivileged uid, on an interpreter and a data directory that
    uid can reach, its packages those of this checkout (read, as any user may)."""
    mode = getattr(request, "param", "auto")
    env = corral_env() | {
        "CORRAL_SANDBOX": "auto" if mode == "ordinary-user" else mode,
        # where the tenant's program lives, and the recorder it shares with the sandbox suite
        "CORRAL_SANDBOX_READ_ONLY": f"{HERE},{PROBES}",
        # this checkout's code, and the agent's directory for ``-m fresh_hostile_agent``
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(HERE), str(PROBES)]),
        "CORRAL_NATS_MONITORING": "true",  # something to attack
    }
    python, user = sys.executable, None
    if mode == "ordinary-user":
        if os.geteuid() != 0:
            pytest.skip("already an ordinary user: the default run is this one")
        found = ordinary_python()
        if found is None:
            pytest.skip(f"no {SYSTEM_PYTHON} of Python {sys.version_info[:2]} to run as a user")
        python, user = found, ORDINARY_USER
        data = Path(tempfile.mkdtemp(prefix="corral-fresh-"))  # where that user may go
        os.chown(data, user, user)
        site = sysconfig.get_paths()["purelib"]
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), site, str(HERE), str(PROBES)])
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
        env["HOME"] = str(data)
    else:
        data = tmp_path / "data"
        data.mkdir()
    try:
        with corral_up(data, env=env, python=python, user=user) as up:
            url = wait_until(lambda: (data / "api.url").read_text().strip(), timeout=30)
            key = (data / "admin.key").read_text().strip()
            fresh = Fresh(up, url, key, python=python, user=user)
            try:
                yield fresh
            finally:
                for client in fresh.clients:
                    client.close()
    finally:
        if user is not None:
            shutil.rmtree(data, ignore_errors=True)


def provision(client: httpx.Client, org: str, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "role": name, "wait": True, **extra}
    r = client.post(f"/v1/orgs/{org}/agents", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def run_task(client: httpx.Client, org: str, agent: str, payload: dict[str, Any]) -> Any:
    r = client.post(f"/v1/orgs/{org}/tasks", json={"agent": agent, "payload": payload})
    assert r.status_code == 201, r.text
    task = r.json()["id"]

    def finished() -> dict[str, Any] | None:
        t = client.get(f"/v1/orgs/{org}/tasks/{task}").json()
        return t if t["state"] in TERMINAL else None

    done = wait_until(finished, timeout=180, interval=0.2)
    logs = client.get(f"/v1/orgs/{org}/agents/{agent}/logs").text
    if done["state"] != "completed":
        sys.stderr.write(f"{json.dumps(done, indent=1)}\n{logs}\n")
    assert done["state"] == "completed", done.get("error")
    return done["result"]


def host_pid(match: str) -> int:
    """The one process whose command line holds ``match`` (seen from outside, as root)."""

    def find() -> int | None:
        for proc in psutil.process_iter(["cmdline"]):
            if match in " ".join(proc.info["cmdline"] or []):
                return proc.pid
        return None

    return wait_until(find, timeout=30)


def agent_pid(agent_id: str) -> int:
    def find() -> int | None:
        for proc in psutil.process_iter(["environ"]):
            try:
                if (proc.info["environ"] or {}).get("CORRAL_AGENT_ID") == agent_id:
                    return proc.pid
            except (psutil.Error, OSError):
                continue
        return None

    return wait_until(find, timeout=30)


def listening_ports(pid: int) -> set[int]:
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}


@dataclass
class Scene:
    """Org B's agent and org A's attackers, provisioned with the orgs' own keys, and what the
    attackers are pointed at."""

    attacker_org: str
    attacker: httpx.Client
    victim_org: str
    victim: httpx.Client
    victim_agent: str
    victim_dir: Path
    agents: list[dict[str, Any]]
    targets: dict[str, Any]


def stage(fresh: Fresh, commands: dict[str, list[str]]) -> Scene:
    data = fresh.up.data
    victim_org, victim = fresh.org("victim")
    attacker_org, attacker = fresh.org("attacker")
    r = victim.put(f"/v1/orgs/{victim_org}/secrets/theirs", json={"value": "not yours"})
    assert r.status_code in (200, 201), r.text
    b_agent = provision(victim, victim_org, "worker")
    r = attacker.put(f"/v1/orgs/{attacker_org}/secrets/ours", json={"value": "ours to read"})
    assert r.status_code in (200, 201), r.text
    agents = []
    for name, command in commands.items():
        r = attacker.post(f"/v1/orgs/{attacker_org}/grants", json={"secret": "ours", "role": name})
        assert r.status_code == 201, r.text
        agents.append(provision(attacker, attacker_org, name, command=command))

    b_dir = data / "agents" / "orgs" / victim_org / "agents" / b_agent["id"]
    platform = fresh.up.proc.pid
    nats = host_pid(f"{data}/nats/server/server.conf")
    nats_ports = _nats_ports(data)
    targets: dict[str, Any] = {
        "data": str(data),
        "read": {
            "victim_creds": str(b_dir / "agent.creds"),
            "victim_log": str(b_dir / "logs" / "agent.log"),
            "victim_pidfile": str(b_dir / "agent.pid"),
            "nats_auth_dir": str(data / "nats" / "auth"),
        },
        "list": {"victim_workspace": str(b_dir / "workspace"), "victim_dir": str(b_dir)},
        "write": {"victim_workspace": str(b_dir / "workspace" / "pwned.txt")},
        "pids": {
            "platform": platform,
            "nats_server": nats,
            "victim_agent": agent_pid(b_agent["id"]),
            "victim_fork_server": psutil.Process(agent_pid(b_agent["id"])).ppid(),
            **_fork_servers(platform),
        },
        "ports": {"api": int(fresh.url.rsplit(":", 1)[1].split("/")[0])},
        "bus_port": nats_ports["nats"][0],
        "granted": "ours",
    }
    for path in [*targets["read"].values(), *targets["list"].values()]:
        assert Path(path).exists(), path  # a refusal of nothing would prove nothing
    monitoring = set(nats_ports.get("monitoring", []))
    assert monitoring, "nats-server has no monitoring port to attack"
    assert monitoring <= listening_ports(nats)
    targets["ports"] |= {f"nats_monitoring_{p}": p for p in monitoring}
    return Scene(attacker_org, attacker, victim_org, victim, b_agent["id"], b_dir, agents, targets)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fresh", ["auto", "ordinary-user"], indirect=True)
def test_a_fresh_platform_lets_no_org_key_agent_cross_its_box(fresh: Fresh) -> None:
    scene = stage(
        fresh,
        {
            "execd": [fresh.python, str(AGENT)],
            "forked": [fresh.python, "-m", AGENT.stem],
        },
    )
    org, attacker = scene.attacker_org, scene.attacker
    if fresh.user is not None:  # really an ordinary user's platform, and agents
        assert psutil.Process(fresh.up.proc.pid).uids().real == fresh.user
        pid = agent_pid(scene.agents[0]["id"])
        assert set(psutil.Process(pid).uids()) == {fresh.user}
    for agent in scene.agents:
        shown = attacker.get(f"/v1/orgs/{org}/agents/{agent['id']}").json()
        assert shown["sandbox"] == "strict", shown
    r = attacker.get(f"/v1/orgs/{org}/agents/{scene.agents[1]['id']}/logs")
    assert "by the fork server" in r.text, r.text  # the fork server's path, really
    with _abstract_listener() as name:
        for agent in scene.agents:
            payload = {**scene.targets, "abstract": [name]}
            result = run_task(attacker, org, agent["id"], payload)
            _check(agent["name"], result["outcomes"])
    assert not (scene.victim_dir / "workspace" / "pwned.txt").exists()
    r = scene.victim.get(f"/v1/orgs/{scene.victim_org}/agents/{scene.victim_agent}")
    assert r.json()["state"] == "running", r.text  # no signal of the attacker's got there


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fresh", ["off"], indirect=True)
def test_without_the_sandbox_the_same_attacks_cross(fresh: Fresh) -> None:
    """The attacks are real: with ``--sandbox off`` the same program reads the keys, lists
    the other org, sees the platform's processes and calls the admin routes with the admin
    key it read (only the attempts that would harm what they reach are left out)."""
    scene = stage(fresh, {"execd": [sys.executable, str(AGENT)]})
    with _abstract_listener() as name:
        payload = {**scene.targets, "abstract": [name], "gentle": True}
        result = run_task(scene.attacker, scene.attacker_org, scene.agents[0]["id"], payload)
    outcomes = result["outcomes"]
    crossed = {n for n, o in outcomes.items() if not n.startswith("works_") and o["ok"]}
    expected = {
        "read_admin.key",
        "read_master.key",
        "read_corral.db",
        "list_orgs",
        "read_victim_creds",
        "environ_platform",
        "see_other_pids",
        "connect_api",
        f"abstract_{name[:40]}",
    }
    assert expected <= crossed, sorted(expected - crossed)
    assert any(n.startswith("connect_nats_monitoring") for n in crossed), sorted(crossed)
    assert any(n.startswith("api_admin_with_crl_") for n in crossed), sorted(crossed)


def _check(name: str, outcomes: dict[str, dict[str, Any]]) -> None:
    missing = [n for n in (*REQUIRED, *CONTROLS, "works_granted_secret") if n not in outcomes]
    assert not missing, f"{name}: no outcome for {missing}"
    crossed = {
        n: o["detail"] for n, o in outcomes.items() if not n.startswith("works_") and o["ok"]
    }
    assert not crossed, f"{name} crossed its box: {crossed}"
    failed = {n: o["detail"] for n, o in outcomes.items() if n.startswith("works_") and not o["ok"]}
    assert not failed, f"{name} lost what an agent must keep: {failed}"
    assert len(outcomes) > 60, sorted(outcomes)  # every target was tried


def _fork_servers(platform: int) -> dict[str, int]:
    """The platform's fork servers (one per org with agents it forks)."""
    found = {}
    for proc in psutil.Process(platform).children():
        if "corral.runtime.local.forkserver" in " ".join(proc.cmdline()):
            found[f"fork_server_{proc.pid}"] = proc.pid
    return found


def _nats_ports(data: Path) -> dict[str, list[int]]:
    """nats-server's own account of its ports (its ports file): ``nats``, ``monitoring``."""
    found = list((data / "nats" / "server" / "run").glob("*.ports"))
    assert len(found) == 1, found
    ports = json.loads(found[0].read_text())
    return {k: [int(url.rsplit(":", 1)[1]) for url in v] for k, v in ports.items() if v}


@contextlib.contextmanager
def _abstract_listener() -> Iterator[str]:
    """An abstract unix socket listening in the host's namespace, as the platform's own might."""
    name = f"corral-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind("\0" + name)
        sock.listen()
        yield name
