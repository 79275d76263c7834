"""Memory and CPU limits bite, and the mechanism reported is the one in force."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from corral.domain.errors import Unavailable
from corral.runtime.base import Phase, RuntimeStatus
from corral.runtime.local import LocalProcessRuntime
from corral.runtime.local.limits import Limits, Mechanism
from tests.runtime import agents
from tests.runtime.pidns import leaders
from tests.support import eventually

HOG = """
    print(READY, AGENT, flush=True)
    hoard = []
    for _ in range(64):  # 1 GiB in 16 MiB pieces, every page written
        hoard.append(b"x" * (16 << 20))
    print("survived", flush=True)
"""


def writable_mechanism() -> str:
    """What this host lets a process of ours write, judged independently of the runtime."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    own = {
        ctl: path
        for line in Path("/proc/self/cgroup").read_text().splitlines()
        for _, ctls, path in [line.split(":", 2)]
        for ctl in (ctls.split(",") if ctls else [""])
    }
    for line in mounts:
        _, point, fstype, *_ = line.split()
        if fstype == "cgroup2":
            group = Path(point + own.get("", "/"))
            controllers = (group / "cgroup.controllers").read_text().split()
            if {"memory", "cpu"} <= set(controllers) and os.access(group, os.W_OK):
                return "cgroup-v2"
    v1 = {}
    for line in mounts:
        _, point, fstype, opts, *_ = line.split()
        for ctl in ("memory", "cpu"):
            if fstype == "cgroup" and ctl in opts.split(",") and ctl in own:
                v1[ctl] = os.access(Path(point + own[ctl]), os.W_OK)
    if v1.get("memory") and v1.get("cpu"):
        return "cgroup-v1"
    return "rlimit"


async def exited(rt: LocalProcessRuntime, org: str, agent_id: str) -> RuntimeStatus:
    async def probe() -> RuntimeStatus | None:
        status = await rt.status(org, agent_id)
        return status if status.phase in (Phase.CRASHED, Phase.EXITED) else None

    status = await eventually(probe, timeout=20, message=f"{agent_id} exited")
    assert status is not None
    return status


async def test_auto_reports_the_strongest_writable_mechanism(tmp_path: Path) -> None:
    async with LocalProcessRuntime(tmp_path / "data") as rt:
        assert rt.mechanism.value == writable_mechanism()
        status = await rt.start(agents.spec("acme", "agent-mech"))
        assert status.limits == writable_mechanism()


async def test_the_limits_in_force_are_the_ones_reported(runtime: LocalProcessRuntime) -> None:
    status = await runtime.start(agents.spec("acme", "agent-lim", memory="96Mi", cpu="250m"))
    assert status.pid is not None
    memory = 96 << 20
    cgroups = Path(f"/proc/{status.pid}/cgroup").read_text()
    if status.limits == Mechanism.CGROUP_V1:
        group = Path(status.detail["cgroup.memory"])
        assert "/acme/agent-lim\n" in cgroups
        assert int((group / "memory.limit_in_bytes").read_text()) == memory
        cpu = Path(status.detail["cgroup.cpu"])
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == 25_000
        assert int((cpu / "cpu.cfs_period_us").read_text()) == 100_000
        assert str(status.pid) in (group / "cgroup.procs").read_text().split()
    elif status.limits == Mechanism.CGROUP_V2:
        group = Path(status.detail["cgroup.unified"])
        assert int((group / "memory.max").read_text()) == memory
        assert (group / "cpu.max").read_text().split() == ["25000", "100000"]
        assert str(status.pid) in (group / "cgroup.procs").read_text().split()
    else:
        assert status.limits == Mechanism.RLIMIT
        assert status.detail["cpu_limit"] == "unenforced"
        limits = Path(f"/proc/{status.pid}/limits").read_text()
        assert f"Max data size             {memory}" in limits
        assert "/corral/" not in cgroups


async def test_the_memory_limit_bites(runtime: LocalProcessRuntime) -> None:
    await runtime.start(agents.spec("acme", "agent-hog", HOG, memory="64Mi"))
    status = await exited(runtime, "acme", "agent-hog")
    logs = await runtime.logs("acme", "agent-hog")
    assert status.phase is Phase.CRASHED
    assert "survived" not in logs
    if status.limits == Mechanism.RLIMIT:
        assert "MemoryError" in logs
    else:
        assert status.detail.get("signal") == "SIGKILL"
        assert status.detail.get("reason") == "oom-killed"
        assert status.exit_code == 137


async def test_an_agent_within_its_memory_limit_is_left_alone(
    runtime: LocalProcessRuntime,
) -> None:
    modest = HOG.replace("range(64)", "range(2)")
    await runtime.start(agents.spec("acme", "agent-modest", modest, memory="128Mi"))
    status = await exited(runtime, "acme", "agent-modest")
    assert status.phase is Phase.EXITED
    assert "survived" in await runtime.logs("acme", "agent-modest")


async def test_the_cpu_limit_bites_under_cgroups(tmp_path: Path) -> None:
    async with LocalProcessRuntime(tmp_path / "data") as rt:
        if rt.mechanism is Mechanism.RLIMIT:
            pytest.skip("rlimits cannot cap a CPU rate")
        spin = """
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                pass
            print("cpu", time.process_time(), flush=True)
        """
        await rt.start(agents.spec("acme", "agent-spin", spin, cpu="200m"))
        await exited(rt, "acme", "agent-spin")
        line = next(
            ln for ln in (await rt.logs("acme", "agent-spin")).splitlines() if ln[:4] == "cpu "
        )
        # 200m over one second of wall time is 0.2 s of CPU; unconfined it would be ~1 s
        assert float(line.split()[1]) < 0.6


@pytest.mark.parametrize("mechanism", [Mechanism.CGROUP_V2, Mechanism.CGROUP_V1])
async def test_insisting_on_a_mechanism_uses_it_or_refuses(
    tmp_path: Path, mechanism: Mechanism
) -> None:
    try:
        rt = LocalProcessRuntime(tmp_path / "data", mechanism=mechanism.value)
    except Unavailable as exc:
        assert mechanism.value in exc.message
        assert writable_mechanism() != mechanism.value
    else:
        async with rt:
            assert rt.mechanism is mechanism


async def test_usage_counts_the_agents_cpu_and_memory(runtime: LocalProcessRuntime) -> None:
    busy = """
        ballast = b"x" * (48 << 20)
        while time.process_time() < 0.2:
            pass
        print(READY, AGENT, flush=True)
        signal.pause()
    """
    await runtime.start(agents.spec("acme", "agent-use", busy))

    async def ready() -> bool:
        return "corral-contract-ready" in await runtime.logs("acme", "agent-use")

    await eventually(ready)
    usage = await runtime.usage("acme", "agent-use")
    assert usage is not None
    assert usage.rss_bytes > 48 << 20
    assert usage.cpu_seconds >= 0.19  # clock-tick rounding
    assert usage.processes == leaders(runtime)  # with the sandbox, its waiter too
    assert usage.uss_bytes is None or usage.uss_bytes > 40 << 20
    await runtime.stop("acme", "agent-use")
    assert await runtime.usage("acme", "agent-use") is None
    assert await runtime.usage("acme", "agent-never") is None


async def test_usage_of_many_agents_counts_each_ones_whole_tree(
    runtime: LocalProcessRuntime,
) -> None:
    with_child = """
        child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        print(READY, AGENT, flush=True)
        signal.pause()
    """
    alone = """
        print(READY, AGENT, flush=True)
        signal.pause()
    """
    await runtime.start(agents.spec("acme", "agent-tree", with_child))
    await runtime.start(agents.spec("globex", "agent-lone", alone))
    for org, agent in (("acme", "agent-tree"), ("globex", "agent-lone")):

        async def ready(org: str = org, agent: str = agent) -> bool:
            return "corral-contract-ready" in await runtime.logs(org, agent)

        await eventually(ready)
    asked = [("acme", "agent-tree"), ("globex", "agent-lone"), ("acme", "agent-never")]
    got = await runtime.usage_many(asked)
    tree, lone = got["agent-tree"], got["agent-lone"]
    assert tree is not None and lone is not None and got["agent-never"] is None
    assert tree.processes == lone.processes + 1  # its child is its own, not the other's
    one = await runtime.usage("acme", "agent-tree")
    assert one is not None and one.processes == tree.processes
    cheap = (await runtime.usage_many(asked, uss=False))["agent-tree"]  # what metrics ask
    assert cheap is not None and cheap.uss_bytes is None and cheap.rss_bytes > 0
    await runtime.stop("acme", "agent-tree")
    await runtime.stop("globex", "agent-lone")


async def test_empty_groups_left_by_a_dead_control_plane_are_swept(tmp_path: Path) -> None:
    async with LocalProcessRuntime(tmp_path / "one") as first:
        if first.mechanism is Mechanism.RLIMIT:
            pytest.skip("no cgroups here")
        stale = first.limiter.place("acme", "agent-dead", Limits(64 << 20, 500))
        fresh = first.limiter.place("acme", "agent-new", Limits(64 << 20, 500))
        for d in stale.dirs.values():
            os.utime(d, (time.time() - 3600, time.time() - 3600))
        async with LocalProcessRuntime(tmp_path / "two"):  # another installation, same host
            assert not any(d.exists() for d in stale.dirs.values())
            assert all(d.exists() for d in fresh.dirs.values())
        assert fresh.remove()
