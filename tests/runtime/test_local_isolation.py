"""What one local agent can see: its own workspace and credentials, nothing of the platform's
or another org's. Local mode separates tenants by file permissions only when agents run under
distinct uids (``run_as``); under one uid these tests pin modes, paths and environments."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from corral.runtime.local import LocalProcessRuntime
from tests.runtime import agents
from tests.runtime.pidns import agent_pid
from tests.support import eventually

SECRET = "-----BEGIN NATS USER JWT-----\neyJzZWNyZXQiOiJ5ZXMifQ\n-----END-----\nSUAM-SEED-123\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def private(path: Path, org_gid: int | None) -> bool:
    """Root's alone (0700), or, where the org's fork server runs as the org's uid, open to
    that org's group for passing through (0710, group the org's own gid): no one else's."""
    info = path.stat()
    if mode(path) == 0o700:
        return True
    return mode(path) == 0o710 and info.st_uid == 0 and info.st_gid == org_gid


def org_gid(pid: int) -> int | None:
    """The gid an agent runs as (its org's, as root), from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        gids = [line.split()[1] for line in f if line.startswith("Gid:")]
    return int(gids[0]) if gids and int(gids[0]) else None


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if item)


async def test_workspace_and_creds_are_private_to_the_agent(
    runtime: LocalProcessRuntime,
) -> None:
    status = await runtime.start(agents.spec("acme", "agent-priv", creds=SECRET))
    paths = runtime.paths("acme", "agent-priv")
    assert status.pid is not None
    gid = org_gid(agent_pid(status.pid))
    assert private(paths.org_dir, gid)
    assert private(paths.agent_dir, gid)
    assert mode(paths.workspace) == 0o700
    assert mode(paths.creds) == 0o600
    assert paths.creds.read_text() == SECRET
    assert paths.creds.parent != paths.workspace  # not swept up with the agent's files
    assert status.pid is not None
    env = environ(status.pid)
    assert env["CORRAL_CREDS_FILE"] == str(paths.creds)
    assert env["CORRAL_WORKSPACE"] == env["HOME"] == str(paths.workspace)
    for secret_part in ("eyJzZWNyZXQiOiJ5ZXMifQ", "SUAM-SEED-123"):
        assert secret_part.encode() not in Path(f"/proc/{status.pid}/environ").read_bytes()
        assert secret_part.encode() not in Path(f"/proc/{status.pid}/cmdline").read_bytes()


async def test_creds_are_removed_when_the_agent_stops(runtime: LocalProcessRuntime) -> None:
    await runtime.start(agents.spec("acme", "agent-creds", creds=SECRET))
    await runtime.stop("acme", "agent-creds")
    assert not runtime.paths("acme", "agent-creds").creds.exists()


async def test_the_agent_inherits_nothing_from_the_control_planes_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launch: str
) -> None:
    monkeypatch.setenv("CORRAL_MASTER_KEY", "platform-master-key")
    monkeypatch.setenv("CORRAL_API_KEY", "platform-admin-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-key")
    async with LocalProcessRuntime(tmp_path / "data") as rt:
        spec = agents.spec("acme", "agent-env", env={"CORRAL_NATS_URL": "nats://127.0.0.1:1"})
        status = await rt.start(spec)
        assert status.pid is not None
        env = environ(status.pid)
    allowed = {"PATH", "LANG", "PYTHONUNBUFFERED", "VIRTUAL_ENV", "PYTHONPATH", "HOME", "TMPDIR"}
    allowed |= {"CORRAL_WORKSPACE", "CORRAL_CREDS_FILE"} | set(spec.env)
    assert set(env) <= allowed
    assert env["CORRAL_NATS_URL"] == "nats://127.0.0.1:1"
    values = "\n".join(env.values())
    for leaked in ("platform-master-key", "platform-admin-key", "cloud-key"):
        assert leaked not in values


async def test_agents_of_two_orgs_are_given_nothing_of_each_other(
    runtime: LocalProcessRuntime,
) -> None:
    a = await runtime.start(agents.spec("alpha", "agent-alpha-1"))
    b = await runtime.start(agents.spec("beta", "agent-beta-1"))
    assert a.pid is not None and b.pid is not None
    for own, other, pid in (("alpha", "beta", a.pid), ("beta", "alpha", b.pid)):
        seen = Path(f"/proc/{pid}/environ").read_text() + Path(f"/proc/{pid}/cmdline").read_text()
        assert own in seen
        assert other not in seen
    alpha, beta = runtime.paths("alpha", "agent-alpha-1"), runtime.paths("beta", "agent-beta-1")
    assert not alpha.workspace.is_relative_to(beta.org_dir)
    assert private(alpha.org_dir, org_gid(agent_pid(a.pid)))
    assert private(beta.org_dir, org_gid(agent_pid(b.pid)))
    assert org_gid(agent_pid(a.pid)) != org_gid(agent_pid(b.pid)) or os.geteuid() != 0
    assert Path(f"/proc/{a.pid}/cwd").resolve() == alpha.workspace.resolve()


# -- distinct uids: real permission checks ---------------------------------------------------


def _python_for_others() -> str | None:
    """A Python interpreter that a uid other than ours may run, if there is one."""
    for candidate in (sys.executable, shutil.which("python3", path="/usr/bin:/bin")):
        if not candidate:
            continue
        path = Path(candidate).resolve()
        if all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents]):
            return str(path)
    return None


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A data directory other uids can traverse (pytest's own tmp dirs are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="corral-uids-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="running agents as other uids needs root")
async def test_agents_under_distinct_uids_cannot_read_each_others_workspace(
    shared_root: Path, launch: str
) -> None:
    # a forked agent needs no interpreter of its own: the fork server (ours) has one
    python = sys.executable if launch == "zygote" else _python_for_others()
    if python is None:
        pytest.skip("no Python interpreter that another uid may run")
    uids = {"alpha": (61001, 61001), "beta": (61002, 61002)}
    async with LocalProcessRuntime(shared_root / "data", run_as=lambda o, a: uids[o]) as rt:
        (shared_root / "data").chmod(0o711)
        beta = rt.paths("beta", "agent-b")
        await rt.start(agents.spec("beta", "agent-b", executable=python))
        (beta.workspace / "plans.txt").write_text("beta's plans")
        os.chown(beta.workspace / "plans.txt", *uids["beta"])
        probe = f"""
            own = os.path.join(os.environ["CORRAL_WORKSPACE"], "mine.txt")
            open(own, "w").write("ok")
            creds = open(os.environ["CORRAL_CREDS_FILE"]).read()
            print("own workspace and creds ok", os.getuid(), bool(creds), flush=True)
            print("ids", os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups())
            for target in ({str(beta.workspace / "plans.txt")!r}, {str(beta.creds)!r}):
                try:
                    open(target).read()
                    print("READ", target, flush=True)
                except (PermissionError, FileNotFoundError):  # hidden by the sandbox
                    print("denied", target, flush=True)
            signal.pause()
        """
        status = await rt.start(agents.spec("alpha", "agent-a", probe, executable=python))

        async def finished() -> str:
            text = await rt.logs("alpha", "agent-a")
            return text if text.count("denied") + text.count("READ") == 2 else ""

        logs = await eventually(finished)
        assert "own workspace and creds ok 61001 True" in logs
        assert "ids 61001 61001 61001 61001 []" in logs
        assert "READ" not in logs
        assert status.pid is not None
        parent = psutil.Process(status.pid).ppid()
        assert parent == (rt.zygote_pid("alpha") if launch == "zygote" else os.getpid())
        alpha = rt.paths("alpha", "agent-a")
        assert alpha.workspace.stat().st_uid == 61001
        assert alpha.creds.stat().st_uid == 61001 and mode(alpha.creds) == 0o600
        assert alpha.agent_dir.stat().st_uid == os.geteuid()  # the pid file stays ours
