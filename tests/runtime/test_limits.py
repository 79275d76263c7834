"""Choosing and writing limits, on fake cgroup trees (plain directories standing in for
cgroupfs), so the v2 and v1 paths are covered on any host."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import pytest

from corral.domain.quantities import Quantity
from corral.runtime.local.limits import Limits, Mechanism
from corral.runtime.local.probing import probe
from tests.runtime.agents import resources

LIMITS = Limits(memory_bytes=64 << 20, cpu_millis=500, pids=100)


def v2_tree(tmp_path: Path, *, controllers: str = "cpuset cpu io memory pids") -> str:
    """A unified hierarchy at tmp/unified with this process in /svc; returns mountinfo."""
    top = tmp_path / "unified" / "svc"
    for group in (top, top / "corral", top / "corral" / "inst", top / "corral" / "inst" / "acme"):
        group.mkdir(parents=True, exist_ok=True)
        (group / "cgroup.controllers").write_text(controllers + "\n")
        (group / "cgroup.subtree_control").write_text("")
    return f"35 24 0:30 / {tmp_path}/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def v1_tree(tmp_path: Path) -> str:
    for name in ("memory", "cpu,cpuacct", "pids"):
        (tmp_path / name / "svc").mkdir(parents=True)
    return "".join(
        f"{40 + i} 24 0:{40 + i} / {tmp_path}/{name} rw - cgroup cgroup rw,{name}\n"
        for i, name in enumerate(("memory", "cpu,cpuacct", "pids"))
    )


V1_SELF = "9:pids:/svc\n4:memory:/svc\n2:cpu,cpuacct:/svc\n0::/\n"


def test_limits_come_from_the_admitted_resources() -> None:
    lim = Limits.of(resources(memory="1536Mi", cpu="250m"), pids=64)
    assert lim == Limits(memory_bytes=1536 << 20, cpu_millis=250, pids=64)
    assert lim.cpu_quota_us() == 25_000
    assert Limits(None, 1).cpu_quota_us() == 1_000  # the kernel's floor
    res = resources()
    zero = type(res)(
        Quantity(Fraction(0)), Quantity(Fraction(0)), res.memory_request, res.memory_limit
    )
    assert Limits.of(zero).cpu_millis is None


def test_cgroup_v2_is_chosen_when_its_controllers_can_be_delegated(tmp_path: Path) -> None:
    mountinfo = v2_tree(tmp_path)
    limiter = probe(instance="inst", mountinfo=mountinfo, self_cgroup="0::/svc\n")
    assert limiter.mechanism is Mechanism.CGROUP_V2
    assert limiter.bases == {"unified": tmp_path / "unified/svc/corral/inst"}
    assert (tmp_path / "unified/svc/cgroup.subtree_control").read_text().startswith("+")

    (tmp_path / "unified/svc/corral/inst/acme/agent-1").mkdir()
    (tmp_path / "unified/svc/corral/inst/acme/agent-1/memory.swap.max").write_text("max")
    placement = limiter.place("acme", "agent-1", LIMITS)
    leaf = tmp_path / "unified/svc/corral/inst/acme/agent-1"
    assert placement.dirs == {"unified": leaf}
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert placement.describe()["limits"] == "cgroup-v2"
    (leaf / "cgroup.procs").write_text("")
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert placement.oom_kills() == 1
    assert list(limiter.groups()) == [("acme", "agent-1")]
    assert placement.remove()
    assert not leaf.exists()


def test_cgroup_v2_without_controllers_falls_back(tmp_path: Path) -> None:
    mountinfo = v2_tree(tmp_path, controllers="")
    limiter = probe(instance="inst", mountinfo=mountinfo, self_cgroup="0::/svc\n")
    assert limiter.mechanism is Mechanism.RLIMIT
    assert "memory and cpu controllers not available" in limiter.reason
    with pytest.raises(ValueError, match="cgroup-v2 is not usable"):
        probe("cgroup-v2", instance="inst", mountinfo=mountinfo, self_cgroup="0::/svc\n")


def test_cgroup_v1_writes_memory_cpu_and_pids_limits(tmp_path: Path) -> None:
    limiter = probe(instance="inst", mountinfo=v1_tree(tmp_path), self_cgroup=V1_SELF)
    assert limiter.mechanism is Mechanism.CGROUP_V1
    assert limiter.bases == {
        "memory": tmp_path / "memory/svc/corral/inst",
        "cpu": tmp_path / "cpu,cpuacct/svc/corral/inst",
        "pids": tmp_path / "pids/svc/corral/inst",
    }
    placement = limiter.place("acme", "agent-1", LIMITS)
    mem, cpu, pids = (placement.dirs[k] for k in ("memory", "cpu", "pids"))
    assert (mem / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert not (mem / "memory.memsw.limit_in_bytes").exists()  # only where swap is accounted
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (pids / "pids.max").read_text() == "100"
    for d in placement.dirs.values():
        (d / "cgroup.procs").write_text("")
        (d / "tasks").write_text("")
    with placement.join() as hook:
        assert callable(hook)  # the hook itself runs only in a forked child
        # v1: the new process moves its one thread ("0", itself) through ``tasks``
        assert [os.readlink(f"/proc/self/fd/{fd}") for fd in hook.procs] == [
            str(placement.dirs[k] / "tasks") for k in ("memory", "cpu", "pids")
        ]
    assert placement.members() == set()
    assert placement.remove()
    assert not any(d.exists() for d in placement.dirs.values())
    limiter.release()
    assert not (tmp_path / "memory/svc/corral/inst").exists()


def test_a_parent_group_can_be_given_instead_of_our_own(tmp_path: Path) -> None:
    mountinfo = v1_tree(tmp_path)
    (tmp_path / "memory/agents.slice").mkdir()
    (tmp_path / "cpu,cpuacct/agents.slice").mkdir()
    limiter = probe(
        instance="inst", mountinfo=mountinfo, self_cgroup=V1_SELF, parent="/agents.slice"
    )
    assert limiter.bases["memory"] == tmp_path / "memory/agents.slice/corral/inst"


def test_without_cgroups_rlimits_are_used_and_cpu_is_unenforced() -> None:
    limiter = probe(instance="inst", mountinfo="", self_cgroup="")
    assert limiter.mechanism is Mechanism.RLIMIT
    placement = limiter.place("acme", "agent-1", LIMITS)
    assert placement.dirs == {}
    assert placement.describe() == {
        "limits": "rlimit",
        "memory_limit": str(64 << 20),
        "cpu_limit": "unenforced",
    }
    assert placement.remove()
    with pytest.raises(ValueError, match="cgroup-v1 is not usable"):
        probe("cgroup-v1", instance="inst", mountinfo="", self_cgroup="")
    with pytest.raises(ValueError):
        probe("cgroup-v3", instance="inst", mountinfo="", self_cgroup="")


def test_mount_points_with_spaces_are_understood(tmp_path: Path) -> None:
    spaced = tmp_path / "cgroup fs"
    (spaced / "memory" / "svc").mkdir(parents=True)
    (spaced / "cpu" / "svc").mkdir(parents=True)
    escaped = str(spaced).replace(" ", "\\040")
    mountinfo = (
        f"40 24 0:40 / {escaped}/memory rw - cgroup cgroup rw,memory\n"
        f"41 24 0:41 / {escaped}/cpu rw - cgroup cgroup rw,cpu\n"
    )
    limiter = probe(instance="i", mountinfo=mountinfo, self_cgroup="4:memory:/svc\n1:cpu:/svc\n")
    assert limiter.mechanism is Mechanism.CGROUP_V1
    assert limiter.bases["memory"] == spaced / "memory/svc/corral/i"
