"""Process identity and teardown for local agents: no orphans, no killing the wrong process.

Three guarantees, each with its own mechanism:

- An agent dies with the control plane: the child asks the kernel for ``SIGKILL`` when its
  parent goes (``PR_SET_PDEATHSIG``), set between fork and exec (:func:`child_setup`) or, for
  a child of the fork server, before the agent runs; the fork server asks the same of the
  control plane (:func:`corral.runtime.local.forkserver.die_with`).
- A control plane that restarts finds what is still running: ``agent.pid`` holds the pid and
  the process's start time, and a pid counts as the agent only if the start time matches, so a
  recycled pid is never mistaken for (or killed as) an agent.
- Stopping an agent stops its whole tree: the agent leads its own session and process group;
  teardown signals the group, the cgroup (when there is one) and any process still in the
  session, then polls until none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from corral.runtime.local.forkserver import die_with
from corral.runtime.local.workspaces import write_private

__all__ = [
    "AgentUsage",
    "ProcessRef",
    "child_setup",
    "read_ref",
    "session_members",
    "signal_all",
    "starts",
    "tree",
    "tree_usage",
    "wait_gone",
    "write_ref",
]

_START_TIME_TOLERANCE = 0.05  # seconds; start times are derived from clock ticks


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """An agent's leader process as recorded in ``agent.pid``."""

    pid: int
    create_time: float
    mechanism: str = ""
    cgroups: dict[str, str] = field(default_factory=dict)
    host: str = ""  # where the pid means something: boot id and PID namespace ("": unknown)
    keeper: int = 0  # the fork server that keeps it once its control plane is gone (0: none)
    keeper_time: float = 0.0  # that server's start time

    @classmethod
    def of(
        cls,
        pid: int,
        *,
        mechanism: str = "",
        cgroups: dict[str, str] | None = None,
        keeper: int = 0,
    ) -> ProcessRef:
        kept = 0.0
        try:
            created = psutil.Process(pid).create_time()
            if keeper:
                kept = psutil.Process(keeper).create_time()
        except psutil.Error:
            created = time.time()
        return cls(pid, created, mechanism, dict(cgroups or {}), this_host(), keeper, kept)

    def is_alive(self) -> bool:
        """The recorded process itself still runs (not a zombie, not a recycled pid, not a
        process of another host that shares the data directory)."""
        if self.host and self.host != this_host():
            return False
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > _START_TIME_TOLERANCE:
                return False
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def keeper_alive(self) -> bool:
        """Whether the fork server that keeps this process once its control plane is gone
        still runs (False when it has none)."""
        if not self.keeper:
            return False
        return ProcessRef(self.keeper, self.keeper_time, host=self.host).is_alive()


@functools.cache
def this_host() -> str:
    """What makes a pid meaningful: this boot of this machine, and this PID namespace."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class AgentUsage:
    """What an agent's process tree uses now (for metrics)."""

    cpu_seconds: float
    rss_bytes: int
    uss_bytes: int | None  # None where the kernel would not tell
    processes: int


#: each live process's children, read from ``/proc`` once (:func:`children_map`)
Children = dict[int, list[int]]


def children_map() -> Children:
    """Every live process's children, from one pass over ``/proc``. Finding one process's
    descendants with psutil reads every process's ``stat`` again; measuring many agents with
    one map keeps the cost at one pass, not one pass per agent. Each ``stat`` is read here
    directly (a psutil object per process cost about three times as much: a metrics scrape with a
    thousand processes on the host read them all every two seconds)."""
    kids: Children = {}
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs: psutil knows how else to ask
        for proc in psutil.process_iter(["ppid"]):
            ppid = proc.info.get("ppid")
            if ppid:
                kids.setdefault(ppid, []).append(proc.pid)
        return kids
    for name in names:
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None and (ppid := int(fields[_PPID])):
                kids.setdefault(ppid, []).append(int(name))
    return kids


#: of ``/proc/<pid>/stat``'s fields after the command name (``state`` is 0): the parent, the
#: user and system CPU time in clock ticks (see proc(5))
_PPID, _UTIME, _STIME = 1, 11, 12
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _resident(pid: int) -> int | None:
    """The process's resident set in pages, from ``/proc/<pid>/statm`` as psutil reads it
    (``stat`` holds a figure the kernel may leave a few hundred pages behind)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _stat(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces and
    parentheses: it ends at the last one); None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def descendants(pid: int, kids: Children) -> list[int]:
    """``pid``'s descendants in ``kids`` (without ``pid``)."""
    found: list[int] = []
    todo = list(kids.get(pid, ()))
    seen = {pid}
    while todo:
        child = todo.pop()
        if child not in seen:
            seen.add(child)
            found.append(child)
            todo.extend(kids.get(child, ()))
    return found


def tree(pid: int) -> list[int]:
    """``pid``'s descendants (without ``pid``), each found in its parent's own list of
    children (``/proc/<pid>/task/<tid>/children``): the cost is the tree's size, where
    :func:`children_map` reads every process on the host. Where the kernel keeps no such
    lists, the whole table is read after all."""
    if not _children_lists():
        return descendants(pid, children_map())
    found: list[int] = []
    todo = [pid]
    seen = {pid}
    while todo:
        for child in _children(todo.pop()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                todo.append(child)
    return found


def _children(pid: int) -> list[int]:
    """``pid``'s children: each thread keeps those it started (a child's parent is the
    thread that forked it), so every thread's list is read."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found  # gone
    for tid in tids:
        with (
            contextlib.suppress(OSError),  # that thread is gone
            open(f"/proc/{pid}/task/{tid}/children", "rb") as f,
        ):
            found.extend(int(child) for child in f.read().split())
    return found


@functools.cache
def _children_lists() -> bool:
    """Whether this kernel keeps each thread's children in ``/proc`` (``CONFIG_PROC_CHILDREN``)."""
    me = os.getpid()
    return os.path.exists(f"/proc/{me}/task/{me}/children")


def tree_usage(
    pids: Iterable[int], kids: Children | None = None, *, uss: bool = True
) -> AgentUsage | None:
    """Sum CPU time and memory over ``pids`` and their descendants (found in ``kids``, read
    now if not given); None if none exists. Without ``uss`` the unique set size (a read of
    each process's whole memory map summary, the dearest figure) is not measured."""
    kids = children_map() if kids is None else kids
    every: dict[int, None] = {}  # in the order found, each once
    for pid in pids:
        every.update(dict.fromkeys((pid, *descendants(pid, kids))))
    if not uss and os.path.isdir("/proc"):  # CPU and RSS: one read of each process's stat
        cpu_ticks, pages, counted = 0, 0, 0
        for one in every:
            fields = _stat(one)
            resident = _resident(one)
            if fields is not None and resident is not None:
                cpu_ticks += int(fields[_UTIME]) + int(fields[_STIME])
                pages += resident
                counted += 1
        return AgentUsage(cpu_ticks / _TICKS, pages * _PAGE, None, counted) if counted else None
    procs: dict[int, psutil.Process] = {}
    for one in every:
        with contextlib.suppress(psutil.Error):
            procs[one] = psutil.Process(one)
    cpu, rss, unique, counted, uss_known = 0.0, 0, 0, 0, uss
    for proc in procs.values():
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                rss_now = proc.memory_info().rss
                try:
                    if uss:
                        unique += proc.memory_full_info().uss
                except psutil.AccessDenied:
                    uss_known = False
        except psutil.Error:
            continue  # gone meanwhile
        cpu += times.user + times.system
        rss += rss_now
        counted += 1
    if not counted:
        return None
    return AgentUsage(cpu, rss, unique if uss_known else None, counted)


def write_ref(path: Path, ref: ProcessRef) -> None:
    write_private(path, json.dumps(asdict(ref)))


def read_ref(path: Path) -> ProcessRef | None:
    try:
        data = json.loads(path.read_text())
        return ProcessRef(
            int(data["pid"]),
            float(data["create_time"]),
            str(data.get("mechanism", "")),
            {str(k): str(v) for k, v in dict(data.get("cgroups", {})).items()},
            str(data.get("host", "")),
            int(data.get("keeper", 0)),
            float(data.get("keeper_time", 0.0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def child_setup(
    *,
    join: Callable[[], None],
    parent_pid: int,
    ids: tuple[int, int] | None,
    keep: Iterable[int] = (),
) -> Callable[[], None]:
    """The hook run in the forked child before exec: limits, identity, death signal, and no
    descriptor of the control plane past the exec.

    The death signal comes last because the kernel clears it when credentials change; if the
    parent died before it was set, the child exits instead of running unsupervised. Every
    descriptor above stderr is marked close-on-exec: not every event loop's spawn closes what
    the parent had open (uvloop's does not), and an agent must not inherit the control plane's
    files or sockets; ``keep`` (the sandbox trampoline's policy and report pipes) excepted.
    With the sandbox, ``ids`` is None: the trampoline switches ids itself, after its
    namespaces are made.
    """
    kept = frozenset(keep)

    def setup() -> None:
        join()
        if ids is not None:
            uid, gid = ids
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in kept:
                with contextlib.suppress(OSError):  # the directory's own descriptor
                    os.set_inheritable(fd, False)
        try:
            die_with(parent_pid)
        except ProcessLookupError:
            os._exit(1)

    return setup


def session_members(leader: ProcessRef) -> set[int]:
    """Live processes in the agent's session or process group, started no earlier than it.

    A session or group id stays reserved while any member lives, so members found this way
    belong to the agent even after the leader is gone.
    """
    found: set[int] = set()
    if psutil.pid_exists(leader.pid) and not leader.is_alive():
        with contextlib.suppress(psutil.Error):
            if psutil.Process(leader.pid).status() != psutil.STATUS_ZOMBIE:
                return found  # the pid was reused, so the old session had already ended
    ticks, booted, me = os.sysconf("SC_CLK_TCK"), psutil.boot_time(), os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # after the parenthesised command: state ppid pgrp session ... starttime (field 22)
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] == b"Z" or leader.pid not in (int(fields[2]), int(fields[3])):
            continue
        if booted + int(fields[19]) / ticks + _START_TIME_TOLERANCE < leader.create_time:
            continue
        found.add(int(entry.name))
    return found


def starts(pids: Iterable[int]) -> list[ProcessRef]:
    """References (pid and start time) to those of ``pids`` that still exist."""
    refs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            refs.append(ProcessRef(pid, psutil.Process(pid).create_time()))
    return refs


def _is_live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_all(pgid: int | None, pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to a process group, and to each pid outside it (each process once)."""
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pgid is None or os.getpgid(pid) != pgid:
                os.kill(pid, sig)


async def wait_gone(probe: Callable[[], set[int]], *, timeout: float) -> set[int]:
    """Poll ``probe`` (pids that might still live) until none lives or ``timeout`` passes.

    Returns the pids still alive at the end (empty on success).
    """
    deadline = time.monotonic() + timeout
    interval = 0.005
    while True:
        alive = {pid for pid in probe() if _is_live(pid)}
        if not alive or time.monotonic() >= deadline:
            return alive
        await asyncio.sleep(interval)
        interval = min(interval * 2, 0.05)
