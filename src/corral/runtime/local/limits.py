"""Memory and CPU limits for local agents: cgroup v2, else cgroup v1, else rlimits.

A local agent is an ordinary process, so nothing stops one org's runaway agent from taking the
machine unless the kernel is told. The strongest mechanism this host lets us write is chosen
once, when the runtime starts, and reported in every status so an operator knows what is in
force rather than what was hoped for:

- ``cgroup-v2``: ``memory.max``, ``memory.swap.max``, ``cpu.max`` and ``pids.max`` on a leaf
  group, when the unified hierarchy has the memory and cpu controllers and we may enable them.
- ``cgroup-v1``: ``memory.limit_in_bytes`` (and ``memsw``), ``cpu.cfs_quota_us`` and
  ``pids.max`` in the memory, cpu and pids hierarchies, when they are writable (root).
- ``rlimit``: ``RLIMIT_DATA`` bounds a process's private memory (``RLIMIT_AS`` only backstops
  it, with headroom, because Python reserves far more address space than it uses). rlimits are
  per process, not per agent tree, and ``RLIMIT_CPU`` is a total, not a rate: under ``rlimit``
  CPU is not enforced, and the status says so.

Groups are named ``corral/<instance>/<org>/<agent>`` below this process's own cgroup (or an
operator-given parent), so agents stay inside whatever the control plane is confined to and two
installations on one host (``instance`` derives from the data directory) never collide. Which
mechanism this host allows is :mod:`.probing`'s to find out.

A new agent process joins its group first thing after the fork, before exec or, when a fork
server starts it, before the agent's module runs (:class:`Entry`, from :meth:`Placement.join`),
so not one byte of the agent's own allocations escapes the limit. Pages a fork server's child
shares with the server (the interpreter and the modules it preloaded) stay charged to the
server's group until the child writes to them.

Joining is the new process writing ``0`` ("myself") to its group's file. Under cgroup v1 that
file is ``tasks``, not ``cgroup.procs``: moving a whole process takes a lock over every fork
and exit on the host, whose write side waits out an RCU grace period (10-20 ms on a loaded
2-core machine, on every agent start), while moving the calling thread alone takes no such
lock. The new process is a fresh fork, single-threaded, so its one thread is all of it, and
everything it starts later is born in the group. cgroup v2 moves processes only, through
``cgroup.procs``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from corral.domain.admission import AdmittedResources

__all__ = [
    "JOIN",
    "Entry",
    "Limiter",
    "Limits",
    "Mechanism",
    "Placement",
    "enable_controllers",
    "forget",
    "join_file",
]

#: what a new, single-threaded process writes to its group's file: "the caller"
JOIN = b"0"
CPU_PERIOD_US = 100_000
_MIN_QUOTA_US = 1_000  # the kernel refuses smaller quotas
_AS_HEADROOM = 1 << 30


class Mechanism(StrEnum):
    CGROUP_V2 = "cgroup-v2"
    CGROUP_V1 = "cgroup-v1"
    RLIMIT = "rlimit"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one agent may use; ``None`` means unlimited."""

    memory_bytes: int | None
    cpu_millis: int | None
    pids: int | None = None

    @classmethod
    def of(cls, res: AdmittedResources, *, pids: int | None = None) -> Limits:
        mem, cpu = res.memory_limit.units, res.cpu_limit.milli
        return cls(mem if mem > 0 else None, cpu if cpu > 0 else None, pids)

    def cpu_quota_us(self) -> int | None:
        if self.cpu_millis is None:
            return None
        return max(_MIN_QUOTA_US, self.cpu_millis * CPU_PERIOD_US // 1000)


def _write(path: Path, value: str) -> None:
    with path.open("w") as f:
        f.write(value)


def _read_counter(path: Path, key: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def join_file(hierarchy: str) -> str:
    """The file a new process writes :data:`JOIN` to: under cgroup v1 (a hierarchy named by
    its controller) ``tasks``, which moves the calling thread without the host-wide lock a
    process move takes; under v2 (``unified``) ``cgroup.procs``."""
    return "cgroup.procs" if hierarchy == "unified" else "tasks"


@dataclass(frozen=True, slots=True)
class Entry:
    """How a new process enters an agent's confinement; calling it does so (in that process).

    Kept as data as well as a hook, so that a fork server can be handed the open group files
    and the rlimits instead of a closure it could not receive.
    """

    procs: tuple[int, ...]  # open group files (``tasks`` or ``cgroup.procs``), one per hierarchy
    rlimits: tuple[tuple[int, int], ...]  # (resource, soft and hard limit)

    def __call__(self) -> None:
        for fd in self.procs:
            os.write(fd, JOIN)
        for res, value in self.rlimits:
            resource.setrlimit(res, (value, value))


@dataclass(slots=True)
class Placement:
    """One agent's confinement: its cgroup directories (none under rlimit) and how to join."""

    mechanism: Mechanism
    dirs: dict[str, Path] = field(default_factory=dict)  # controller (or "unified") -> group
    limits: Limits | None = None

    def describe(self) -> dict[str, str]:
        out: dict[str, str] = {"limits": self.mechanism.value}
        if self.limits is not None:
            lim = self.limits
            out["memory_limit"] = str(lim.memory_bytes) if lim.memory_bytes else "unlimited"
            if self.mechanism is Mechanism.RLIMIT:
                out["cpu_limit"] = "unenforced"
            else:
                out["cpu_limit"] = f"{lim.cpu_millis}m" if lim.cpu_millis else "unlimited"
        for name, path in self.dirs.items():
            out[f"cgroup.{name}"] = str(path)
        return out

    def rlimits(self) -> tuple[tuple[int, int], ...]:
        """``(resource, limit)`` pairs a new process of the agent sets on itself (rlimit only)."""
        lim = self.limits
        if self.mechanism is not Mechanism.RLIMIT or lim is None or not lim.memory_bytes:
            return ()
        cap = 2 * lim.memory_bytes + _AS_HEADROOM
        return ((resource.RLIMIT_DATA, lim.memory_bytes), (resource.RLIMIT_AS, cap))

    @contextlib.contextmanager
    def join(self) -> Iterator[Entry]:
        """Yield what a new process of the agent does to come under the limits.

        The group files are opened here, in the parent, so in the new process, between fork
        and exec (or before a fork server's child runs the agent), joining is only writing
        :data:`JOIN` to open descriptors and setting rlimits: no path lookup, no open. The new
        process must still be single-threaded then (see the module's docstring).
        """
        fds = [os.open(d / join_file(name), os.O_WRONLY) for name, d in self.dirs.items()]
        try:
            yield Entry(tuple(fds), self.rlimits())
        finally:
            for fd in fds:
                os.close(fd)

    def members(self) -> set[int]:
        pids: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return pids

    def oom_kills(self) -> int:
        if "memory" in self.dirs:
            return _read_counter(self.dirs["memory"] / "memory.oom_control", "oom_kill")
        if "unified" in self.dirs:
            return _read_counter(self.dirs["unified"] / "memory.events", "oom_kill")
        return 0

    def kill(self, sig: int) -> None:
        """Signal every process in the group, including any that left the process group."""
        unified = self.dirs.get("unified")
        if sig == signal.SIGKILL and unified is not None and (unified / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(unified / "cgroup.kill", "1")
                return
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def remove(self) -> bool:
        """Remove the group and its empty parents; False while processes are still in it."""
        done = True
        for d in self.dirs.values():
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
                if any(d.glob("*/")) or self.members():
                    done = False
                    continue
                _remove_files(d)  # a plain directory (tests) keeps its files
                with contextlib.suppress(OSError):
                    d.rmdir()
                done = done and not d.exists()
            for parent in (d.parent, d.parent.parent):  # <org>, then <instance>
                with contextlib.suppress(OSError):
                    parent.rmdir()
        return done


def _remove_files(d: Path) -> None:
    for f in d.iterdir():
        if f.is_file():
            with contextlib.suppress(OSError):
                f.unlink()


@dataclass(frozen=True, slots=True)
class Limiter:
    """The mechanism chosen for this host and where its groups live."""

    mechanism: Mechanism
    bases: Mapping[str, Path]  # controller (or "unified") -> <parent>/corral/<instance>
    reason: str = ""  # why stronger mechanisms were not used

    def group_dirs(self, org: str, agent_id: str) -> dict[str, Path]:
        return {name: base / org / agent_id for name, base in self.bases.items()}

    def place(self, org: str, agent_id: str, limits: Limits) -> Placement:
        """Create the agent's group with its limits written; nothing is left on failure.

        Raises:
            OSError: the group could not be created or a limit not written.
        """
        placement = Placement(self.mechanism, self.group_dirs(org, agent_id), limits)
        try:
            for name, d in placement.dirs.items():
                d.parent.mkdir(parents=True, exist_ok=True)
                if self.mechanism is Mechanism.CGROUP_V2:
                    enable_controllers(d.parent.parent.parent)  # <instance>'s parent: corral
                    enable_controllers(d.parent.parent)
                    enable_controllers(d.parent)
                d.mkdir(exist_ok=True)  # may be a stale, empty group from an earlier run
                _write_limits(self.mechanism, name, d, limits)
        except OSError:
            placement.remove()
            raise
        return placement

    def existing(self, org: str, agent_id: str) -> Placement:
        dirs = {k: d for k, d in self.group_dirs(org, agent_id).items() if d.is_dir()}
        return Placement(self.mechanism, dirs)

    def sweep(self, *, older_than: float = 60.0) -> int:
        """Remove empty agent groups, of any instance, that a dead control plane left.

        A group counts as left behind only when it holds no process and was created more than
        ``older_than`` seconds ago, so a group being set up right now is never touched.
        Returns how many agent groups were removed.
        """
        removed, now = 0, time.time()

        def stale(d: Path) -> bool:
            return now - d.stat().st_mtime >= older_than

        for base in self.bases.values():
            top = base.parent  # <parent>/corral
            for leaf in _glob(top, "*/*/*/"):
                with contextlib.suppress(OSError):
                    if stale(leaf) and not (leaf / "cgroup.procs").read_text().split():
                        leaf.rmdir()
                        removed += 1
            for d in [*_glob(top, "*/*/"), *_glob(top, "*/")]:  # orgs, then instances
                with contextlib.suppress(OSError):
                    if d != base and stale(d):
                        d.rmdir()
        return removed

    def release(self) -> None:
        """Remove this instance's (empty) group directories; agents' groups stay if busy."""
        forget(self.bases)

    def groups(self) -> Iterator[tuple[str, str]]:
        """(org, agent_id) of every group of this instance, present or left behind."""
        seen: set[tuple[str, str]] = set()
        for base in self.bases.values():
            if not base.is_dir():
                continue
            for d in base.glob("*/*/"):
                key = (d.parent.name, d.name)
                if key not in seen:
                    seen.add(key)
                    yield key


def enable_controllers(group: Path) -> None:
    """Delegate memory, cpu and pids to ``group``'s children (cgroup v2)."""
    available = set((group / "cgroup.controllers").read_text().split())
    enabled = set((group / "cgroup.subtree_control").read_text().split())
    for ctl in ("memory", "cpu", "pids"):
        if ctl in available and ctl not in enabled:
            _write(group / "cgroup.subtree_control", f"+{ctl}")


def _write_limits(mechanism: Mechanism, name: str, d: Path, lim: Limits) -> None:
    quota = lim.cpu_quota_us()
    if mechanism is Mechanism.CGROUP_V2:
        _write(d / "memory.max", str(lim.memory_bytes) if lim.memory_bytes else "max")
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0")
        _write(d / "cpu.max", f"{quota if quota else 'max'} {CPU_PERIOD_US}")
        if lim.pids and "pids" in (d.parent / "cgroup.subtree_control").read_text().split():
            _write(d / "pids.max", str(lim.pids))
    elif name == "memory":
        memsw = d / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            _write(memsw, "-1")  # memsw may never drop below the limit: lift it first
        _write(d / "memory.limit_in_bytes", str(lim.memory_bytes or -1))
        if memsw.exists() and lim.memory_bytes:
            _write(memsw, str(lim.memory_bytes))  # and swap may not extend it
    elif name == "cpu":
        _write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(d / "cpu.cfs_quota_us", str(quota if quota else -1))
    elif name == "pids" and lim.pids:
        _write(d / "pids.max", str(lim.pids))


def forget(bases: Mapping[str, Path]) -> None:
    """Remove these (empty) group directories; any still in use stay."""
    for base in bases.values():
        with contextlib.suppress(OSError):
            base.rmdir()


def _glob(top: Path, pattern: str) -> list[Path]:
    """``top.glob(pattern)``, or nothing if a directory vanished while it was read (another
    control plane on this host swept it): the sweep is a best effort, done again next start."""
    try:
        return list(top.glob(pattern))
    except OSError:
        return []
