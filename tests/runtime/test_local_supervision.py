"""Supervision of local agents: crashes are seen, stops are complete, nothing is orphaned,
and a restarted control plane finds (and can stop) whatever an earlier one left running."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral.domain.errors import Conflict, InvalidInput, Unavailable
from corral.runtime.base import Phase
from corral.runtime.local import LocalProcessRuntime
from tests.runtime import agents
from tests.runtime.contract import watching
from tests.runtime.pidns import host_pid, host_pids
from tests.runtime.standin import FAMILY
from tests.support import eventually

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def family(rt: LocalProcessRuntime, org: str, agent_id: str) -> tuple[int, int]:
    """Host pids of an agent running FAMILY and of the child it started (it wrote down the
    pids it saw, in its own PID namespace when the sandbox gives it one)."""
    record = rt.paths(org, agent_id).workspace / "family.txt"
    text = await eventually(lambda: record.is_file() and record.read_text())
    tracked = (await rt.status(org, agent_id)).pid
    assert tracked is not None
    leader, child = (host_pid(tracked, int(p)) for p in str(text).split())
    return leader, child


async def test_a_kill_9_is_reported_as_a_crash_and_cleaned_up(
    runtime: LocalProcessRuntime,
) -> None:
    async with watching(runtime) as exits:
        status = await runtime.start(agents.spec("acme", "agent-k9"))
        assert status.pid is not None
        os.kill(status.pid, signal.SIGKILL)
        event = await asyncio.wait_for(anext(exits), timeout=10)
    assert (event.agent_id, event.phase, event.exit_code) == ("agent-k9", Phase.CRASHED, 137)
    assert event.detail["signal"] == "SIGKILL"
    assert "reason" not in event.detail  # killed, not out of memory
    paths = runtime.paths("acme", "agent-k9")
    assert not paths.pidfile.exists() and not paths.creds.exists()
    assert not any(Path(v).exists() for k, v in status.detail.items() if k.startswith("cgroup."))
    assert "exited unexpectedly with code 137, signal SIGKILL" in await runtime.logs(
        "acme", "agent-k9"
    )


async def test_stop_leaves_no_process_of_the_agent(runtime: LocalProcessRuntime) -> None:
    escapee = """
        child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        loner = subprocess.Popen(
            [sys.executable, "-c", "import signal; signal.pause()"], start_new_session=True
        )
        with open("family.tmp", "w") as f:
            f.write(f"{child.pid} {loner.pid}")
        os.replace("family.tmp", "family.txt")
        print(READY, AGENT, flush=True)
        signal.pause()
    """
    status = await runtime.start(agents.spec("acme", "agent-tree", escapee))
    child, loner = await family(runtime, "acme", "agent-tree")
    assert alive(child) and alive(loner)
    await runtime.stop("acme", "agent-tree", grace=2)
    assert status.pid is not None
    assert not any(alive(pid) for pid in (status.pid, child, loner))
    assert (await runtime.status("acme", "agent-tree")).phase is Phase.EXITED


async def test_stop_finds_grandchildren_without_reading_every_process(
    tmp_path: Path, mechanism: str, launch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # unconfined: no PID namespace ends the grandchild for us, and without a cgroup only
    # the leader's tree leads to it (it left the agent's session)
    runtime = LocalProcessRuntime(tmp_path / "data", mechanism=mechanism, sandbox="off")
    grandparent = """
        middle = subprocess.Popen(
            [sys.executable, "-c", "import signal, subprocess, sys; "
             "g = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'], "
             "start_new_session=True); print(g.pid, flush=True); signal.pause()"],
            stdout=subprocess.PIPE,
        )
        grandchild = int(middle.stdout.readline())
        with open("family.tmp", "w") as f:
            f.write(f"{middle.pid} {grandchild}")
        os.replace("family.tmp", "family.txt")
        print(READY, AGENT, flush=True)
        signal.pause()
    """
    try:
        status = await runtime.start(agents.spec("acme", "agent-old", grandparent))
        middle, grandchild = await family(runtime, "acme", "agent-old")
        assert psutil.Process(grandchild).ppid() == middle and alive(grandchild)
        reads: list[str] = []
        # psutil's private parent map, read on purpose (its stubs leave it out)
        ppid_map: Callable[[], dict[int, int]] = psutil._ppid_map  # type: ignore[attr-defined]
        process_iter = psutil.process_iter

        def read_parents() -> dict[int, int]:
            reads.append("ppid_map")
            return ppid_map()

        def read_all(*args: Any, **kwargs: Any) -> Iterator[psutil.Process]:
            reads.append("process_iter")
            return process_iter(*args, **kwargs)

        monkeypatch.setattr(psutil, "_ppid_map", read_parents)
        monkeypatch.setattr(psutil, "process_iter", read_all)
        await runtime.stop("acme", "agent-old", grace=2)
        assert reads == []  # its tree is read from the leader down, not from every process
        assert status.pid is not None
        assert not any(alive(pid) for pid in (status.pid, middle, grandchild))
    finally:
        await runtime.close()


async def test_a_crashed_agents_children_are_not_left_behind(
    runtime: LocalProcessRuntime,
) -> None:
    await runtime.start(agents.spec("acme", "agent-fam", FAMILY))
    leader, child = await family(runtime, "acme", "agent-fam")
    os.kill(leader, signal.SIGKILL)

    async def crashed() -> bool:
        return (await runtime.status("acme", "agent-fam")).phase is Phase.CRASHED

    await eventually(crashed)
    assert not alive(child)  # gone before the crash was reported


async def test_close_stops_every_agent(tmp_path: Path, launch: str) -> None:
    rt = LocalProcessRuntime(tmp_path / "data")
    pids = [(await rt.start(agents.spec("acme", f"agent-{i}"))).pid for i in range(3)]
    await rt.close()
    assert not any(alive(pid) for pid in pids if pid)
    with pytest.raises(Unavailable):
        await rt.start(agents.spec("acme", "agent-late"))
    assert [s async for s in rt.exits()] == []  # ended, and nothing was a crash


async def test_a_command_that_cannot_start_leaves_nothing_behind(
    runtime: LocalProcessRuntime,
) -> None:
    spec = agents.spec("acme", "agent-bad")
    bad = dataclasses.replace(spec, command=["/no/such"])
    with pytest.raises(Conflict, match="/no/such"):  # the host lacks it: not a fault
        await runtime.start(bad)
    paths = runtime.paths("acme", "agent-bad")
    assert not paths.agent_dir.exists()
    assert (await runtime.status("acme", "agent-bad")).phase is Phase.ABSENT
    assert not any(d.exists() for d in runtime.limiter.group_dirs("acme", "agent-bad").values())
    # an existing workspace is kept when a start fails
    await runtime.start(spec)
    await runtime.stop("acme", "agent-bad")
    with pytest.raises(Conflict):
        await runtime.start(bad)
    assert paths.workspace.is_dir() and not paths.creds.exists()
    with pytest.raises(InvalidInput):
        await runtime.start(dataclasses.replace(spec, command=[]))


async def test_a_restarted_control_plane_finds_and_stops_a_leftover(
    make_runtime: Callable[..., LocalProcessRuntime], launch: str
) -> None:
    first = make_runtime()
    started = await first.start(agents.spec("acme", "agent-left"))
    second = make_runtime()  # same data directory, no memory of the agent
    [found] = await second.list_agents()
    assert (found.org, found.agent_id, found.phase) == ("acme", "agent-left", Phase.RUNNING)
    assert found.pid == started.pid
    assert found.detail["leftover"] == "true"
    assert (await second.status("acme", "agent-left")).phase is Phase.RUNNING
    with pytest.raises(Conflict):
        await second.start(agents.spec("acme", "agent-left"))
    await second.stop("acme", "agent-left", grace=2)
    assert started.pid is not None and not alive(started.pid)
    assert await second.list_agents() == []
    assert (await second.status("acme", "agent-left")).phase is Phase.ABSENT
    assert not second.paths("acme", "agent-left").pidfile.exists()


async def test_a_recycled_pid_is_not_taken_for_the_agent(
    make_runtime: Callable[..., LocalProcessRuntime],
) -> None:
    first = make_runtime(mechanism="rlimit")
    started = await first.start(agents.spec("acme", "agent-gone"))
    await first.stop("acme", "agent-gone")
    pidfile = first.paths("acme", "agent-gone").pidfile
    # a stale record naming a live process that is not the agent (this test's own pid)
    pidfile.write_text(f'{{"pid": {os.getpid()}, "create_time": 1.0, "mechanism": "rlimit"}}')
    second = make_runtime(mechanism="rlimit")
    assert await second.list_agents() == []
    await second.stop("acme", "agent-gone", grace=0.1)  # must not signal us
    assert started.pid is not None


async def test_a_killed_control_plane_leaves_no_agent_running(
    tmp_path: Path, mechanism: str, launch: str, make_runtime: Callable[..., LocalProcessRuntime]
) -> None:
    root = tmp_path / "data"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
    standin = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("standin.py")),
        str(root),
        mechanism,
        launch,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert standin.stdout is not None
        line = await asyncio.wait_for(standin.stdout.readline(), timeout=20)
        assert line.startswith(b"started")
        tracked, zygote = int(line.split()[1]), int(line.split()[2])  # 0: exec'd
        record = root / "orgs/acme/agents/agent-orphan/workspace/family.txt"
        text = await eventually(lambda: record.is_file() and record.read_text())
        boxed = bool(host_pids(tracked))  # in a PID namespace of its own (the sandbox)
        agent, child = (host_pid(tracked, int(p)) for p in str(text).split())
        assert alive(agent) and alive(child)
        assert psutil.Process(tracked).ppid() == (zygote or standin.pid)

        standin.kill()
        await standin.wait()
        await eventually(lambda: not alive(agent), message="the agent died with its control plane")
        await eventually(  # it notices its parent is gone on its own, a moment apart
            lambda: not zygote or not alive(zygote),
            message="the fork server died with its control plane",
        )

        if boxed:  # its namespace ended with its first process: nothing of it outlives it
            await eventually(lambda: not alive(child), message="the namespace ended")
            assert await make_runtime(mechanism=mechanism).list_agents() == []
            return
        # its child outlived it, orphaned; the next control plane finds it and stops it
        assert alive(child)
        fresh = make_runtime(mechanism=mechanism)
        [leftover] = await fresh.list_agents()
        assert (leftover.agent_id, leftover.phase) == ("agent-orphan", Phase.RUNNING)
        assert leftover.pid is None  # the leader is gone, a member is not
        await fresh.stop("acme", "agent-orphan", grace=1)
        assert not alive(child)
        assert await fresh.list_agents() == []
    finally:  # whatever failed above, leave nothing running
        if standin.returncode is None:
            standin.kill()
            await standin.wait()
        await make_runtime(mechanism=mechanism).stop("acme", "agent-orphan", grace=0)


async def _killed_standin(root: Path, *, adopt: float) -> tuple[int, int]:
    """A control plane (a replica's runtime, its agents forked by a fork server) that starts
    an agent and is killed with -9; the agent's pid and its fork server's."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    standin = await asyncio.create_subprocess_exec(
        *(sys.executable, str(Path(__file__).with_name("standin.py")), str(root)),
        *("auto", "zygote", str(adopt)),
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert standin.stdout is not None
        line = await asyncio.wait_for(standin.stdout.readline(), timeout=20)
        assert line.startswith(b"started"), line
        agent, zygote = int(line.split()[1]), int(line.split()[2])
        assert zygote and psutil.Process(agent).ppid() == zygote
    finally:
        standin.kill()
        await standin.wait()
    return agent, zygote


async def test_a_replicas_agent_outlives_it_and_is_adopted_by_the_next(
    tmp_path: Path, make_runtime: Callable[..., LocalProcessRuntime]
) -> None:
    agent, zygote = await _killed_standin(tmp_path / "data", adopt=60)
    assert alive(agent) and alive(zygote)  # kept by the fork server, not killed with it

    heir = make_runtime(adopt_seconds=60)
    status = await heir.adopt("acme", "agent-orphan")
    assert status is not None
    assert (status.phase, status.pid, status.detail["adopted"]) == (Phase.RUNNING, agent, "true")
    assert await heir.adopt("acme", "agent-orphan") == status  # adopting twice is once
    assert "adopted pid" in await heir.logs("acme", "agent-orphan")

    async with watching(heir) as exits:
        os.kill(agent, signal.SIGKILL)  # it crashes under its adopter: reported as a crash
        event = await asyncio.wait_for(anext(exits), timeout=60)
    assert (event.agent_id, event.phase) == ("agent-orphan", Phase.CRASHED)
    assert event.detail["status"].startswith("unknown")
    await eventually(lambda: not alive(zygote), message="the fork server left after its last child")
    assert await heir.adopt("acme", "agent-orphan") is None  # nothing left to adopt


async def test_an_agent_nobody_adopts_is_ended_with_its_fork_server(
    tmp_path: Path, make_runtime: Callable[..., LocalProcessRuntime]
) -> None:
    agent, zygote = await _killed_standin(tmp_path / "data", adopt=1)
    await eventually(lambda: not alive(agent), message="the unadopted agent was ended")
    await eventually(lambda: not alive(zygote), message="its fork server left")
    assert await make_runtime(adopt_seconds=1).adopt("acme", "agent-orphan") is None
