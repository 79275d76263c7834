"""A small world for a hostile agent: the control plane's data directory with a key and another
tenant's workspace in it, two victim processes holding a secret in their environment (one of
the control plane's uid, one of the agent's), TCP listeners on an allowed and a denied port, and
an abstract unix socket; and the two ways to launch a sandboxed script (``exec``: the
trampoline; ``fork``: a forked child of a Python process that imported the sandbox).

Who launches: ``root`` (the agent switches to an organization's uid) or ``user`` (an ordinary
uid the test drops to with ``subprocess``'s ``user=``, whose agent gets a user namespace).
The agent's interpreter must be readable by those uids: the test's own if every directory on
its path lets others in, else the system's ``python3``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.runtime.sandbox import IdentityMode, SandboxMode, SandboxPolicy, probe

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2] / "src"
HOSTILE = HERE / "hostile.py"
#: what the hostile agents share (imported by ``hostile.py`` in the sandbox)
PROBES = HERE.parents[1] / "probes"
FORKED = HERE / "forked.py"
USER_UID = 64123  # the "ordinary user" that runs the control plane, in the user runs
ORG_UID = 64124  # the organization's uid the root runs switch agents to
WHO = ["root", "user"]
LAUNCHES = ["exec", "fork"]


def _open_to_others(path: str) -> bool:
    path = os.path.realpath(path)
    parts = Path(path).parents
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in parts) and bool(
        os.stat(path).st_mode & stat.S_IXOTH
    )


def agent_python() -> str | None:
    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and _open_to_others(candidate):
            version = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            if version == "True":
                return candidate
    return None


@pytest.fixture(scope="session")
def python() -> str:
    found = agent_python()
    if found is None:
        pytest.skip("no Python >= 3.11 that other uids may execute (a parent dir is 0700)")
    return found


@pytest.fixture(scope="session")
def host_report() -> Any:
    return probe()


def skip_unless_possible(who: str, report: Any) -> None:
    if who == "root" and os.geteuid() != 0:
        pytest.skip("the root launch path needs the tests to run as root")
    if who == "user" and report.trials.get("user"):
        pytest.skip(f"no user namespace for an ordinary user here: {report.trials['user']}")
    if who == "root" and report.trials.get("root"):
        pytest.skip(f"the root sandbox does not apply here: {report.trials['root']}")


@dataclass
class World:
    """The files, processes and ports one hostile run meets."""

    who: str
    base: Path
    launcher_uid: int
    agent_uid: int
    config: dict[str, Any] = field(default_factory=dict)
    victims: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def workspace(self) -> Path:
        return self.data / "agents" / "me" / "workspace"

    def policy(self, **changes: Any) -> SandboxPolicy:
        root = self.who == "root"
        policy = SandboxPolicy.for_agent(
            str(self.workspace),
            tmp=str(self.data / "agents" / "me" / "tmp"),
            tcp_connect=(self.config["allowed_port"],),
            hide=(str(self.data),),
            uid=ORG_UID if root else None,
            gid=ORG_UID if root else None,
            read_only=(str(SRC), str(HOSTILE), str(PROBES)),
            # built by the test's root for a launcher that may be the ordinary user
            identity=IdentityMode.SWITCH if root else IdentityMode.USER_NAMESPACE,
        )
        return policy.with_changes(**changes)


def _victim(python: str, uid: int, secret: str) -> subprocess.Popen[bytes]:
    code = "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"
    kwargs: dict[str, Any] = {} if uid == os.geteuid() else {"user": uid, "group": uid}
    if kwargs and os.geteuid() == 0:
        kwargs["extra_groups"] = []
    proc = subprocess.Popen(
        [python, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={"CORRAL_SECRET": secret, "PATH": os.environ.get("PATH", "")},
        **kwargs,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


@contextlib.contextmanager
def make_world(who: str, python: str) -> Iterator[World]:
    me = os.geteuid()
    launcher = me if who == "root" or me != 0 else USER_UID
    agent = ORG_UID if who == "root" else launcher
    world = World(who, Path(tempfile.mkdtemp(prefix="corral-hostile-")), launcher, agent)
    try:
        os.chmod(world.base, 0o755)
        data = world.data
        (data / "agents" / "other" / "workspace").mkdir(parents=True)
        (data / "secret.key").write_text("master-key")
        (data / "agents" / "other" / "workspace" / "note.txt").write_text("other's note")
        for d in (world.workspace, data / "agents" / "me" / "tmp"):
            d.mkdir(parents=True)
            os.chown(d, agent, agent)
        outside = world.base / "outside"
        outside.mkdir()
        # file modes do not protect anything here: every refusal must come from the sandbox
        for path in (data, outside, *data.rglob("*")):
            os.chmod(path, 0o777 if path.is_dir() else 0o666)
        for d in (world.workspace, data / "agents" / "me" / "tmp"):
            os.chmod(d, 0o700)
        allowed, denied, abstract = socket.socket(), socket.socket(), socket.socket(socket.AF_UNIX)
        for s in (allowed, denied):
            s.bind(("127.0.0.1", 0))
            s.listen(64)
        name = f"corral-hostile-{os.getpid()}-{who}"
        abstract.bind(b"\0" + name.encode())
        abstract.listen(64)
        world.sockets += [allowed, denied, abstract]
        world.victims += [_victim(python, launcher, "platform-secret")]
        world.victims += [_victim(python, agent, "peer-secret")]
        world.config = {
            "data": str(data),
            "workspace": str(world.workspace),
            "tmp": str(data / "agents" / "me" / "tmp"),
            "other_workspace": str(data / "agents" / "other" / "workspace"),
            "outside": str(outside),
            "platform_pid": world.victims[0].pid,
            "peer_pid": world.victims[1].pid,
            "launcher_pid": os.getpid(),
            "allowed_port": allowed.getsockname()[1],
            "denied_port": denied.getsockname()[1],
            "abstract": name,
        }
        yield world
    finally:
        for proc in world.victims:
            proc.kill()
            proc.communicate()
        for s in world.sockets:
            s.close()
        shutil.rmtree(world.base, ignore_errors=True)


def launch(
    world: World,
    python: str,
    how: str,
    policy: SandboxPolicy | None,
    script: list[str],
    *,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (a path and its arguments) sandboxed by ``policy`` (``None``: not at
    all), launched ``how`` ("exec" or "fork") by the world's launcher uid."""
    kwargs: dict[str, Any] = {}
    if world.launcher_uid != os.geteuid():
        kwargs = {"user": world.launcher_uid, "group": world.launcher_uid, "extra_groups": []}
    env = {
        "PYTHONPATH": os.pathsep.join([str(SRC), str(PROBES)]),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    if policy is None:
        return subprocess.run(
            [python, *script], capture_output=True, text=True, timeout=timeout, env=env, **kwargs
        )
    read, write = os.pipe()
    os.write(write, policy.encode())
    os.close(write)
    try:
        if how == "exec":
            argv = [python, "-m", "corral.runtime.sandbox.enter", str(read), "--", python, *script]
        else:
            argv = [python, str(FORKED), str(read), "--", *script]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            pass_fds=(read,),
            cwd=str(world.workspace),
            **kwargs,
        )
    finally:
        os.close(read)


def outcomes(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-3000:]}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output: {done.stderr[-3000:]}"
    result: dict[str, dict[str, Any]] = json.loads(lines[-1])
    return result


__all__ = [
    "HOSTILE",
    "LAUNCHES",
    "ORG_UID",
    "WHO",
    "SandboxMode",
    "World",
    "launch",
    "make_world",
    "outcomes",
    "skip_unless_possible",
]
