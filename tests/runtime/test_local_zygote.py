"""The fork server: an agent it forks is set up exactly as an exec'd one, is supervised as
closely, and neither the server nor a later child holds anything of another agent.

The runtime's other tests run both ways already (the ``launch`` fixture); these pin what only
the fork server could get wrong."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from corral.domain.errors import InvalidInput, Unavailable
from corral.runtime.base import Phase, RuntimeStatus
from corral.runtime.local import LocalProcessRuntime, default_env
from corral.runtime.local.forkclient import Zygote, runnable_module
from corral.runtime.local.forkserver import Launch
from tests.runtime import agents
from tests.runtime.contract import READY, Behaviour, watching
from tests.runtime.pidns import agent_pid, confined, own_descriptors
from tests.support import eventually

PROBE = """
    import json, tempfile, threading
    report = {
        "environ": dict(os.environ),
        "sid": os.getsid(0),
        "pgid": os.getpgid(0),
        "ppid": os.getppid(),
        "cwd": os.getcwd(),
        "path0": sys.path[0],
        "argv": sys.argv,
        "tmp": tempfile.gettempdir(),
        "sigchld_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
        "threads": threading.active_count(),
    }
    with open("report.tmp", "w") as f:
        json.dump(report, f)
    os.replace("report.tmp", "report.json")
    print(READY, AGENT, flush=True)
    signal.pause()
"""


@pytest.fixture
def launch(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every agent in this module is forked by the server."""
    monkeypatch.setattr(agents, "default_launch", "zygote")
    return "zygote"


def assert_own(leader: int) -> None:
    """A confined agent's waiter holds nothing but its own pipe and its view of /proc."""
    extra = sorted(own_descriptors(leader).values())
    assert len(extra) in (0, 2), extra
    if extra:
        assert extra[0] == "/proc" and extra[1].startswith("pipe:"), extra


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def ready(rt: LocalProcessRuntime, org: str, agent_id: str) -> None:
    async def up() -> bool:
        return f"{READY} {agent_id}" in await rt.logs(org, agent_id)

    await eventually(up, message=f"{agent_id} printed its ready line")


async def report(rt: LocalProcessRuntime, org: str, agent_id: str) -> dict[str, object]:
    path = rt.paths(org, agent_id).workspace / "report.json"
    text = await eventually(lambda: path.is_file() and path.read_text())
    data: dict[str, object] = json.loads(str(text))
    return data


async def next_exit(exits: AsyncIterator[RuntimeStatus]) -> RuntimeStatus:
    return await asyncio.wait_for(anext(exits), timeout=10)


def writable_memory_holds(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` is anywhere in the process's writable memory (heap, stack, anon)."""
    try:
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
            for line in maps:
                fields = line.split()
                if not fields[1].startswith("rw"):
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                try:
                    mem.seek(start)
                    chunk = mem.read(end - start)
                except (OSError, OverflowError, ValueError):
                    continue
                if needle in chunk:
                    return True
    except PermissionError:
        pytest.skip("reading another process's memory is not allowed here")
    return False


# -- which path --------------------------------------------------------------------------------


def test_only_python_dash_m_of_this_interpreter_goes_to_the_server() -> None:
    assert runnable_module([sys.executable, "-m", "corral.agents.general"]) == (
        "corral.agents.general"
    )
    assert runnable_module([sys.executable, "-m", "pkg.mod", "--flag"]) == "pkg.mod"
    assert runnable_module([sys.executable, "-c", "print(1)"]) is None
    assert runnable_module([sys.executable, "-u", "-m", "pkg"]) is None
    assert runnable_module(["/usr/bin/python3", "-m", "pkg"]) is None
    assert runnable_module([sys.executable, "-m", "not a/module"]) is None
    assert runnable_module([sys.executable, "-m"]) is None


async def test_without_the_server_the_same_command_is_execd(tmp_path: Path, launch: str) -> None:
    async with LocalProcessRuntime(tmp_path / "data", zygote=False) as rt:
        status = await rt.start(agents.spec("acme", "agent-exec"))
        assert status.pid is not None
        assert psutil.Process(status.pid).ppid() == os.getpid()
        assert rt.zygote_pid("acme") is None


async def test_what_the_server_cannot_honour_is_execd(runtime: LocalProcessRuntime) -> None:
    other_path = agents.spec(
        "acme", "agent-path", env={"PYTHONPATH": f"{os.environ['PYTHONPATH']}:/x"}
    )
    huge = agents.spec("acme", "agent-huge", env={"CORRAL_BIG": "x" * 10_000})
    normal = agents.spec("acme", "agent-normal")
    for spec in (other_path, huge, normal):
        await runtime.start(spec)
        await ready(runtime, "acme", spec.agent_id)
    parents = {
        s.agent_id: psutil.Process(s.pid).ppid()
        for s in [
            await runtime.status("acme", a) for a in ("agent-path", "agent-huge", "agent-normal")
        ]
        if s.pid is not None
    }
    assert parents == {
        "agent-path": os.getpid(),
        "agent-huge": os.getpid(),
        "agent-normal": runtime.zygote_pid("acme"),
    }


async def test_without_a_server_agents_are_execd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launch: str
) -> None:
    async def broken(*args: object, **kwargs: object) -> Zygote:
        raise Unavailable("no fork server today")

    monkeypatch.setattr(Zygote, "start", broken)
    async with LocalProcessRuntime(tmp_path / "data") as rt:
        status = await rt.start(agents.spec("acme", "agent-fallback"))
        await ready(rt, "acme", "agent-fallback")
        assert status.pid is not None
        assert psutil.Process(status.pid).ppid() == os.getpid()


# -- set-up ------------------------------------------------------------------------------------


async def test_a_forked_agent_is_set_up_as_an_execd_one(
    runtime: LocalProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_MASTER_KEY", "platform-master-key")
    spec = agents.spec("acme", "agent-probe", PROBE, env={"CORRAL_NATS_URL": "nats://x:1"})
    status = await runtime.start(spec)
    seen = await report(runtime, "acme", "agent-probe")
    paths = runtime.paths("acme", "agent-probe")
    pid = status.pid
    assert pid is not None and runtime.zygote_pid("acme") is not None

    assert psutil.Process(pid).ppid() == runtime.zygote_pid("acme")  # the forking one
    agent = agent_pid(pid)  # with the sandbox, pid 1 of a PID namespace of its own
    if confined(runtime):
        assert seen["ppid"] == 0  # its parent is outside its namespace
        assert os.getsid(agent) == os.getpgid(agent) == pid  # the tracked one's: killpg works
        if os.geteuid() == 0:  # the fork server made the namespace as it forked: no waiter
            assert agent == pid
        else:  # it made the namespace itself, and forked it first process from a waiter
            assert agent != pid and psutil.Process(agent).ppid() == pid
    else:
        assert seen["ppid"] == runtime.zygote_pid("acme")
        assert seen["sid"] == seen["pgid"] == pid  # a session and process group of its own
    expected = {
        **default_env(),
        "HOME": str(paths.workspace),
        "TMPDIR": str(paths.tmp),
        **spec.env,
        "CORRAL_WORKSPACE": str(paths.workspace),
        "CORRAL_CREDS_FILE": str(paths.creds),
    }
    assert seen["environ"] == expected  # all of it, and nothing else
    assert psutil.Process(pid).environ() == expected  # what /proc shows, too
    assert psutil.Process(agent).environ() == expected
    assert "platform-master-key" not in Path(f"/proc/{pid}/environ").read_text()
    assert seen["cwd"] == seen["path0"] == str(paths.workspace)  # as `python -m` puts it
    assert seen["argv"] == [str(Path(agents.__file__).with_name("codeagent.py"))]
    assert seen["tmp"] == str(paths.tmp)
    assert seen["sigchld_default"] is True
    assert seen["threads"] == 1

    fds = {int(fd): os.readlink(f"/proc/{agent}/fd/{fd}") for fd in os.listdir(f"/proc/{agent}/fd")}
    assert fds == {0: os.devnull, 1: str(paths.log), 2: str(paths.log)}
    assert_own(pid)
    await ready(runtime, "acme", "agent-probe")
    assert ", by the fork server)" in await runtime.logs("acme", "agent-probe")


async def test_a_forked_agent_exits_as_an_interpreter_would(runtime: LocalProcessRuntime) -> None:
    cases = {
        "agent-code": ("sys.exit(3)", 3),
        "agent-raise": ("raise RuntimeError('boom')", 1),
        "agent-msg": ("sys.exit('going away')", 1),
        # a fault, not kill(getpid()): a namespace's pid 1 cannot signal itself to death
        "agent-sig": ("import ctypes; ctypes.string_at(0)", 139),
        "agent-atexit": (
            "import atexit, threading\n"
            "atexit.register(lambda: print('atexit ran', flush=True))\n"
            "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\n",
            0,
        ),
    }
    async with watching(runtime) as exits:
        for agent_id, (code, _) in cases.items():
            await runtime.start(agents.spec("acme", agent_id, code))
        events = {e.agent_id: e for e in [await next_exit(exits) for _ in cases]}
    for agent_id, (_, status) in cases.items():
        assert events[agent_id].exit_code == status, agent_id
        want = Phase.EXITED if status == 0 else Phase.CRASHED
        assert events[agent_id].phase is want, agent_id
    assert events["agent-sig"].detail["signal"] == "SIGSEGV"
    assert "RuntimeError: boom" in await runtime.logs("acme", "agent-raise")
    assert "going away" in await runtime.logs("acme", "agent-msg")
    atexit_log = await runtime.logs("acme", "agent-atexit")
    assert atexit_log.index("thread done") < atexit_log.index("atexit ran")


# -- supervision -------------------------------------------------------------------------------


async def test_killing_the_server_kills_its_agents_and_the_next_start_gets_a_new_one(
    runtime: LocalProcessRuntime,
) -> None:
    async with watching(runtime) as exits:
        pids = []
        for agent_id in ("agent-one", "agent-two"):
            status = await runtime.start(agents.spec("acme", agent_id))
            await ready(runtime, "acme", agent_id)
            assert status.pid is not None
            pids.append(status.pid)
        first = runtime.zygote_pid("acme")
        assert first is not None
        os.kill(first, signal.SIGKILL)
        events = [await next_exit(exits), await next_exit(exits)]
    assert {e.agent_id for e in events} == {"agent-one", "agent-two"}
    for event in events:
        assert (event.phase, event.exit_code) == (Phase.CRASHED, 137)
        assert event.detail["reason"] == "fork-server-died"
    assert not any(alive(pid) for pid in pids)
    assert runtime.zygote_pid("acme") is None

    status = await runtime.start(agents.spec("acme", "agent-one"))
    await ready(runtime, "acme", "agent-one")
    assert runtime.zygote_pid("acme") not in (None, first)
    assert status.pid is not None
    assert psutil.Process(status.pid).ppid() == runtime.zygote_pid("acme")
    assert "reason fork-server-died" in await runtime.logs("acme", "agent-two")


async def test_a_start_cancelled_anywhere_leaves_no_process(runtime: LocalProcessRuntime) -> None:
    await runtime.start(agents.spec("acme", "agent-warm"))  # the server is up: cancel starts
    server = runtime.zygote_pid("acme")
    assert server is not None
    for steps in range(100):  # cancel after 0, 1, 2 ... turns of the event loop
        agent_id = f"agent-c{steps}"
        task = asyncio.create_task(runtime.start(agents.spec("acme", agent_id)))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled():  # it got through: an ordinary, supervised agent
            await runtime.stop("acme", agent_id, grace=0.5)
        paths = runtime.paths("acme", agent_id)
        assert not paths.creds.exists() and not paths.pidfile.exists()

    warm = (await runtime.status("acme", "agent-warm")).pid

    def only_the_warm_one() -> bool:
        return [c.pid for c in psutil.Process(server).children()] == [warm]

    await eventually(only_the_warm_one, message="no child of the server but the first agent")
    assert runtime.zygote_pid("acme") == server


async def test_closing_the_runtime_ends_the_server(tmp_path: Path, launch: str) -> None:
    rt = LocalProcessRuntime(tmp_path / "data")
    try:
        status = await rt.start(agents.spec("acme", "agent-x"))
        server = rt.zygote_pid("acme")
        assert server is not None and status.pid is not None
    finally:
        await rt.close()
    assert not alive(status.pid)
    assert not alive(server)
    with pytest.raises(Unavailable):
        await rt.start(agents.spec("acme", "agent-late"))


def test_the_server_works_on_the_control_planes_own_loop(tmp_path: Path, launch: str) -> None:
    """``corral up`` runs on uvloop, whose subprocesses inherit descriptors that its spawn
    does not close: the server must still start, and its children hold only 0, 1 and 2."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async with LocalProcessRuntime(tmp_path / "data") as rt, watching(rt) as exits:
            status = await rt.start(agents.spec("acme", "agent-uv"))
            await ready(rt, "acme", "agent-uv")
            server = rt.zygote_pid("acme")
            assert status.pid is not None and server is not None
            assert psutil.Process(status.pid).ppid() == server
            assert os.getsid(server) == server
            assert sorted(os.listdir(f"/proc/{agent_pid(status.pid)}/fd")) == ["0", "1", "2"]
            assert_own(status.pid)
            os.kill(status.pid, signal.SIGKILL)
            event = await next_exit(exits)
            assert (event.phase, event.exit_code) == (Phase.CRASHED, 137)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_an_execd_agent_holds_no_descriptor_of_the_control_plane_on_uvloop(
    tmp_path: Path, launch: str
) -> None:
    """uvloop's spawn does not close the parent's descriptors: the runtime's own child set-up
    must, or the agent inherits the control plane's files and sockets."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        leak = os.open(os.devnull, os.O_RDONLY)  # an inheritable descriptor of the parent
        os.set_inheritable(leak, True)
        try:
            async with LocalProcessRuntime(tmp_path / "data", zygote=False) as rt:
                status = await rt.start(agents.spec("acme", "agent-exec-uv"))
                await ready(rt, "acme", "agent-exec-uv")
                assert status.pid is not None and rt.zygote_pid("acme") is None
                assert psutil.Process(status.pid).ppid() == os.getpid()
                assert sorted(os.listdir(f"/proc/{agent_pid(status.pid)}/fd")) == ["0", "1", "2"]
                assert_own(status.pid)
                await rt.stop("acme", "agent-exec-uv", grace=1.0)
        finally:
            os.close(leak)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


async def test_neither_the_server_nor_a_later_agent_holds_anything_of_an_agent(
    runtime: LocalProcessRuntime,
) -> None:
    org, marker, secret = "org-7c41b9", "only-of-agent-a-5f1c2e", "SUAM-SEED-OF-A-9d8e7f"
    creds = f"-----BEGIN NATS USER JWT-----\n{secret}\n"
    spec = agents.spec(org, "agent-a", env={"CORRAL_MARK": marker}, creds=creds)
    a = await runtime.start(spec)
    await ready(runtime, org, "agent-a")
    b = await runtime.start(agents.spec("other", "agent-b"))
    await ready(runtime, "other", "agent-b")
    own, others = runtime.zygote_pid(org), runtime.zygote_pid("other")
    assert a.pid is not None and b.pid is not None and own is not None and others is not None
    assert own != others  # a server per org: no layout, canary or hash seed shared
    assert writable_memory_holds(a.pid, marker.encode())  # the probe finds what is there
    for pid in (own, others, b.pid):  # a's own server too: a later agent of a's org forks it
        # a's own server may know a's org (as root it is boxed to that org's directory, by
        # name), never anything of a's agent
        needles = (marker, secret) if pid == own else (marker, secret, org)
        for needle in needles:
            assert not writable_memory_holds(pid, needle.encode()), (pid, needle)


# -- the client, directly -----------------------------------------------------------------------


@pytest.fixture
async def zygote() -> AsyncIterator[Zygote]:
    server = await Zygote.start(default_env(), preload=())
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def devnull() -> Iterator[int]:
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        yield fd
    finally:
        os.close(fd)


async def test_a_child_that_cannot_set_itself_up_fails_its_start(
    zygote: Zygote, devnull: int, tmp_path: Path
) -> None:
    bad = Launch("tests.runtime.codeagent", ("python",), {}, str(tmp_path / "missing"), None)
    with pytest.raises(Unavailable, match="FileNotFoundError"):
        await zygote.spawn(bad, log=devnull, procs=())
    assert zygote.running
    assert psutil.Process(zygote.pid).children() == []  # it exited and was reaped

    with pytest.raises(InvalidInput):
        await zygote.spawn(dataclasses.replace(bad, env={"A": "x\0y"}), log=devnull, procs=())
    with pytest.raises(InvalidInput):
        await zygote.spawn(dataclasses.replace(bad, env={"A=B": "x"}), log=devnull, procs=())

    good = Launch("json.tool", ("python", "--help"), {}, str(tmp_path), None)
    child = await zygote.spawn(good, log=devnull, procs=())
    assert await child.wait() == 0 and not child.lost


async def test_a_preloaded_module_runs_as_in_a_fresh_interpreter(tmp_path: Path) -> None:
    server = await Zygote.start(default_env(), preload=("json.tool",))
    log = os.open(tmp_path / "out.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        launch = Launch("json.tool", ("python", "--help"), {}, str(tmp_path), None)
        child = await server.spawn(launch, log=log, procs=())
        assert await child.wait() == 0
    finally:
        os.close(log)
        await server.close()
    out = (tmp_path / "out.log").read_text()
    assert "usage:" in out
    assert "Warning" not in out  # runpy finds no second copy of it to warn about


async def test_a_server_whose_preloads_start_a_thread_refuses_to_serve(tmp_path: Path) -> None:
    (tmp_path / "threaded.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    )
    env = {**default_env(), "PYTHONPATH": str(tmp_path)}
    with pytest.raises(Unavailable, match="did not get ready"):
        await Zygote.start(env, preload=("threaded",))


def test_behaviours_run_the_same_either_way() -> None:
    execd = agents.spec("acme", "agent-x", Behaviour.FAIL, launch="exec")
    forked = agents.spec("acme", "agent-x", Behaviour.FAIL, launch="zygote")
    assert execd.command[2] == forked.env["CORRAL_TEST_CODE"]
    assert runnable_module(forked.command) == agents.CODE_AGENT


async def test_each_org_has_its_own_server_closed_once_it_has_no_agent(
    runtime: LocalProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.runtime.local import forkpool

    monkeypatch.setattr(forkpool, "ZYGOTE_IDLE_SECONDS", 0.2)
    a = await runtime.start(agents.spec("acme", "agent-1"))
    b = await runtime.start(agents.spec("globex", "agent-2"))
    await ready(runtime, "acme", "agent-1")
    await ready(runtime, "globex", "agent-2")
    acme, globex = runtime.zygote_pid("acme"), runtime.zygote_pid("globex")
    assert acme is not None and globex is not None and acme != globex
    assert a.pid is not None and b.pid is not None
    assert psutil.Process(a.pid).ppid() == acme and psutil.Process(b.pid).ppid() == globex

    await runtime.stop("globex", "agent-2", grace=1.0)

    def globex_server_gone() -> bool:
        return runtime.zygote_pid("globex") is None and not alive(globex)

    await eventually(globex_server_gone, message="the idle org's fork server closed")
    assert runtime.zygote_pid("acme") == acme and alive(acme)  # acme still has an agent
    again = await runtime.start(agents.spec("globex", "agent-3"))
    await ready(runtime, "globex", "agent-3")
    assert again.pid is not None
    assert psutil.Process(again.pid).ppid() == runtime.zygote_pid("globex") != globex


_PTH_PROBE = """
import asyncio, json, os, sys
from corral.runtime.local.forkserver import Launch
from corral.runtime.local.forkclient import Zygote

async def main(home, out):
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ["PYTHONPATH"]}
    server = await Zygote.start(env, preload=())
    log = os.open(os.path.join(out, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        launch = Launch("json.tool", ("python", "--help"), {**env, "HOME": home}, out, None)
        child = await server.spawn(launch, log=log, procs=())
        print("exit", await child.wait(), flush=True)
    finally:
        os.close(log)
        await server.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_code_in_the_agents_user_site_finds_nothing_of_the_server(tmp_path: Path) -> None:
    """An agent's HOME is its writable workspace, so a ``.pth`` there runs as the agent's own
    code the next time it starts: by then only its stdio may be open (not the server's channel,
    the launch description or the set-up pipe, through which it could read another agent's
    launch or forge exit reports)."""
    import site
    import subprocess

    base = getattr(sys, "_base_executable", sys.executable)
    user_site_on = subprocess.run(
        [base, "-c", "import site, sys; sys.exit(0 if site.ENABLE_USER_SITE else 1)"],
        check=False,
    )
    if user_site_on.returncode != 0:
        pytest.skip("the base interpreter has no user site: a .pth there cannot run")
    home, out = tmp_path / "home", tmp_path / "out"
    out.mkdir()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    user_site = home / ".local" / "lib" / version / "site-packages"
    user_site.mkdir(parents=True)
    seen = out / "seen.json"
    (user_site / "probe.pth").write_text(
        "import json, os; open("
        f"{str(seen)!r}, 'w').write(json.dumps("
        "{int(f): os.readlink('/proc/self/fd/' + f) for f in os.listdir('/proc/self/fd') "
        "if os.path.exists('/proc/self/fd/' + f)}))\n"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    paths = [str(src), *site.getsitepackages()]
    done = subprocess.run(
        [base, "-c", _PTH_PROBE, str(home), str(out)],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(paths)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "exit 0" in done.stdout, done.stderr
    held = {int(fd): target for fd, target in json.loads(seen.read_text()).items()}
    probe = ("probe.pth", "seen.json")  # the probe itself: the file it runs and the one it writes
    extra = {fd: t for fd, t in held.items() if fd > 2 and not t.endswith(probe)}
    assert extra == {}, extra


async def test_an_orgs_server_is_not_closed_for_idleness_while_a_start_is_in_flight(
    runtime: LocalProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.runtime.local import forkpool

    monkeypatch.setattr(forkpool, "ZYGOTE_IDLE_SECONDS", 0.05)
    await runtime.start(agents.spec("acme", "agent-1"))
    await ready(runtime, "acme", "agent-1")
    server = runtime._forkservers._servers["acme"]
    gate, entered = asyncio.Event(), asyncio.Event()
    real_spawn = server.spawn

    async def held_spawn(*args: object, **kwargs: object) -> object:
        entered.set()
        await gate.wait()
        return await real_spawn(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(server, "spawn", held_spawn)
    second = asyncio.create_task(runtime.start(agents.spec("acme", "agent-2")))
    await entered.wait()  # agent-2's start holds the server
    await runtime.stop("acme", "agent-1", grace=1.0)  # the org's last running agent ends
    assert "acme" not in runtime._forkservers._idle  # no idle close armed under a start
    gate.set()
    status = await second
    await ready(runtime, "acme", "agent-2")
    assert status.pid is not None and psutil.Process(status.pid).ppid() == server.pid
