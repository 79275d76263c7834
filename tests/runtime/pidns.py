"""What a confined agent's pids mean outside its box.

With the sandbox on, the agent is the first process (pid 1) of a PID namespace of its own; the
pid the runtime tracks is the agent itself when its fork server made that namespace as it forked
it (as root), else the sandbox's waiter, of which the agent is the only child: pids the agent writes down
are that namespace's. These helpers translate them into the host's, so the same tests read
the same way with the sandbox on or off.
"""

from __future__ import annotations

import os

import psutil

from corral.runtime.local import LocalProcessRuntime
from tests.runtime import agents

__all__ = ["agent_pid", "confined", "host_pid", "host_pids", "leaders", "own_descriptors"]


def confined(rt: LocalProcessRuntime) -> bool:
    """Whether this runtime's agents run in PID namespaces of their own."""
    report = rt.sandbox.report
    return rt.sandbox.enabled and report is not None and report.namespaces


def leaders(rt: LocalProcessRuntime) -> int:
    """Processes an idle agent of ``rt`` is made of: the agent, and its waiter if confined,
    unless its fork server made its PID namespace as it forked it (as root)."""
    made_at_fork = agents.default_launch == "zygote" and os.geteuid() == 0
    return 2 if confined(rt) and not made_at_fork else 1


def _namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def _own_pid(pid: int) -> int:
    """``pid`` in its own (innermost) PID namespace."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return int(next(ln for ln in status if ln.startswith("NSpid:")).split()[-1])


def host_pids(leader: int) -> dict[int, int]:
    """The processes of the agent whose tracked pid is ``leader``: pid in its namespace →
    pid on the host; empty when the agent shares the host's namespace."""
    try:
        mine = _namespace(leader)
        if mine != _namespace(os.getpid()) and _own_pid(leader) == 1:
            theirs = mine  # the agent itself, first of its namespace: no waiter
        else:
            inner = [c.pid for c in psutil.Process(leader).children() if _namespace(c.pid) != mine]
            if not inner:
                return {}
            theirs = _namespace(inner[0])
    except (OSError, psutil.Error, StopIteration):
        return {}
    found: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if _namespace(int(name)) != theirs:
                continue
            with open(f"/proc/{name}/status", encoding="ascii") as status:
                line = next(ln for ln in status if ln.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        found[int(line.split()[-1])] = int(name)
    return found


def host_pid(leader: int, pid: int) -> int:
    """``pid`` as the agent tracked as ``leader`` saw it, as the host sees it."""
    return host_pids(leader).get(pid, pid)


def agent_pid(leader: int) -> int:
    """The agent's own process: the first of its namespace when confined, else ``leader``."""
    return host_pids(leader).get(1, leader)


def own_descriptors(leader: int) -> dict[int, str]:
    """What the waiter ``leader`` holds besides stdio, which must be its own: the pipe its
    agent watches it by and its view of the host's /proc (empty when not confined)."""
    if leader == agent_pid(leader):
        return {}
    fds = {
        int(fd): os.readlink(f"/proc/{leader}/fd/{fd}") for fd in os.listdir(f"/proc/{leader}/fd")
    }
    return {fd: target for fd, target in fds.items() if fd > 2}
