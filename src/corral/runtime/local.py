"""LocalProcessRuntime: each agent is an OS process group on this machine.

This is the embedded shape's runtime, so it must be as careful as a container runtime with
only the kernel's help:

- isolation: a 0700 workspace per agent, credentials in a 0600 file (never in the environment
  or argv), an environment built from nothing (the control plane's own variables, which may
  hold platform secrets, are never inherited), and memory/CPU limits (see :mod:`.limits`).
  Agents started by one uid can read each other's files; only with ``run_as`` (a distinct uid
  per agent or org) do file modes separate tenants. Say so to anyone relying on local mode.
- supervision: a named, guarded task per agent awaits its exit; an exit nobody asked for is
  ``CRASHED`` (or ``EXITED`` for code 0) and is published on :meth:`exits`.
- no orphans: agents die with the control plane (``PR_SET_PDEATHSIG``); ``agent.pid`` lets a
  restarted control plane find and stop anything left behind; stopping an agent stops its tree.

Two ways to start an agent, with the same result. A command ``[sys.executable, "-m", MODULE]``
(the built-in agent's) goes to its organization's fork server (:mod:`.zygote`), started on the
org's first such start and again after it dies: a process that has already imported the
agent-side modules and forks a child per agent, so neither the control plane's memory is copied
nor ~90 ms of imports repeated. The server reaps its children and reports their exit statuses;
it dies with the control plane, and its children with it. Any other command is forked and
exec'd from here (``zygote=False`` sends every command that way).

One fork server per organization, never shared: children of one server share its address-space
layout (ASLR), its stack canary and its hash seed, which must not leak from one tenant's agent
to another's. A server with no agent of its org left running is closed after
``ZYGOTE_IDLE_SECONDS``.

Agents (and the fork server) are started from the event loop's thread, and the kernel's
parent-death signal follows that thread: run the runtime on a loop that lives as long as the
control plane.

Output goes straight from the agent to ``logs/agent.log`` (no pipe through the control plane),
so logs survive a control plane restart and a chatty agent cannot block on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

import psutil

from corral.domain.errors import Conflict, InvalidInput, Unavailable
from corral.runtime.base import LaunchSpec, Phase, RuntimeStatus
from corral.runtime.limits import Limiter, Limits, Mechanism, Placement, probe
from corral.runtime.processes import (
    AgentUsage,
    ProcessRef,
    child_setup,
    read_ref,
    session_members,
    signal_all,
    starts,
    tree_usage,
    wait_gone,
    write_ref,
)
from corral.runtime.workspaces import AgentPaths, check_name, ensure_dir, tail_lines, write_private
from corral.runtime.zygote import Launch
from corral.runtime.zygote_client import Zygote, ZygoteChild, runnable_module

__all__ = ["AgentUsage", "LocalProcessRuntime", "RunAs", "default_env"]

log = logging.getLogger(__name__)

RunAs = Callable[[str, str], tuple[int, int] | None]
"""``(org, agent_id) -> (uid, gid)`` to run that agent under, or None for the runtime's own."""

_KILL_TIMEOUT = 5.0  # after SIGKILL; only a process stuck in the kernel takes longer
_LAUNCHING = 16  # starts past set-up at once: each holds its log and cgroup files open
#: An org's fork server with no agent of the org running is closed after this long.
ZYGOTE_IDLE_SECONDS = 120.0


def default_env() -> dict[str, str]:
    """The only variables an agent gets besides its own: enough to find and run Python."""
    bindir = str(Path(sys.executable).parent)
    path = os.pathsep.join(dict.fromkeys([bindir, "/usr/local/bin", "/usr/bin", "/bin"]))
    env = {"PATH": path, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    if pythonpath := os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = pythonpath
    return env


class _Child(Protocol):
    """An agent's leader as started: an ``asyncio`` subprocess or a fork server's child."""

    @property
    def pid(self) -> int: ...

    async def wait(self) -> int: ...


@dataclass(eq=False, slots=True)
class _Agent:
    paths: AgentPaths
    placement: Placement
    proc: _Child
    ref: ProcessRef
    oom_before: int
    note: str
    phase: Phase = Phase.RUNNING
    exit_code: int | None = None
    detail: dict[str, str] = field(default_factory=dict)
    stopping: bool = False
    stop_deadline: float = 0.0
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    signalled: dict[int, float] = field(default_factory=dict)  # pid -> start time

    def status(self) -> RuntimeStatus:
        running = self.phase is Phase.RUNNING
        detail = {**self.placement.describe(), **self.detail}
        if self.note:
            detail["limits_note"] = self.note
        return RuntimeStatus(
            self.paths.org,
            self.paths.agent_id,
            self.phase,
            pid=self.ref.pid if running else None,
            exit_code=self.exit_code,
            limits=self.placement.mechanism.value,
            detail=detail,
        )


def _exit_detail(returncode: int, *, oom: bool) -> tuple[int, dict[str, str]]:
    """Shell-style exit code (128 + signal, as Kubernetes reports it) and what happened."""
    detail: dict[str, str] = {}
    code = returncode
    if returncode < 0:
        code = 128 - returncode
        try:
            detail["signal"] = signal.Signals(-returncode).name
        except ValueError:
            detail["signal"] = f"SIG{-returncode}"
    if oom:
        detail["reason"] = "oom-killed"
    return code, detail


class LocalProcessRuntime:
    """Runs each agent as a supervised OS process group under ``root/orgs/<org>/agents``.

    Args:
        root: the data directory (created if missing).
        mechanism: ``"auto"`` picks cgroup-v2, else cgroup-v1, else rlimit; or insist on one.
        cgroup_parent: cgroup path to create agent groups under (default: our own group).
        pids_max: cap on processes per agent where a pids controller is available.
        base_env: the variables every agent gets (default :func:`default_env`).
        run_as: which uid/gid each agent runs as (default: the runtime's own).
        limiter: an already probed :class:`Limiter` (tests use fake cgroup trees).
        zygote: start ``[sys.executable, "-m", MODULE]`` commands from the fork server
            (the default); False forks and execs every agent from the control plane.

    Raises:
        Unavailable: ``mechanism`` names one this host cannot provide.
    """

    name = "local"

    def __init__(
        self,
        root: Path,
        *,
        mechanism: str = "auto",
        cgroup_parent: str | None = None,
        pids_max: int | None = 4096,
        base_env: Mapping[str, str] | None = None,
        run_as: RunAs | None = None,
        limiter: Limiter | None = None,
        zygote: bool = True,
    ) -> None:
        self._root = Path(root).absolute()
        self._dir_mode = 0o711 if run_as is not None else 0o700
        self._root.mkdir(parents=True, exist_ok=True)
        ensure_dir(self._root / "orgs", self._dir_mode)
        instance = hashlib.sha256(str(self._root.resolve()).encode()).hexdigest()[:12]
        if limiter is None:
            try:
                limiter = probe(mechanism, instance=instance, parent=cgroup_parent)
            except ValueError as exc:
                raise Unavailable(str(exc), details={"mechanism": mechanism}) from exc
        self._limiter = limiter
        limiter.sweep()
        self._pids_max = pids_max
        self._base_env = dict(base_env if base_env is not None else default_env())
        self._run_as = run_as
        self._agents: dict[tuple[str, str], _Agent] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._exits: asyncio.Queue[RuntimeStatus | None] = asyncio.Queue()
        self._closed = False
        self._use_zygote = zygote and hasattr(os, "memfd_create")
        self._zygotes: dict[str, Zygote] = {}  # org → its fork server
        self._zygote_locks: dict[str, asyncio.Lock] = {}
        self._zygote_idle: dict[str, asyncio.TimerHandle] = {}
        self._starting: dict[str, int] = {}  # org → starts in flight
        self._launching = asyncio.Semaphore(_LAUNCHING)

    @property
    def root(self) -> Path:
        return self._root

    def paths(self, org: str, agent_id: str) -> AgentPaths:
        """Where the agent's workspace, logs and records are (whether or not they exist)."""
        return AgentPaths.of(self._root, org, agent_id)

    @property
    def mechanism(self) -> Mechanism:
        """How memory and CPU limits are enforced on this host."""
        return self._limiter.mechanism

    @property
    def limiter(self) -> Limiter:
        return self._limiter

    @property
    def limits_note(self) -> str:
        """Why a stronger mechanism was not used ("" when none was passed over)."""
        return self._limiter.reason

    def zygote_pid(self, org: str) -> int | None:
        """The pid of ``org``'s fork server while one runs (it starts with the first agent of
        the org it can run)."""
        zygote = self._zygotes.get(org)
        return zygote.pid if zygote is not None and zygote.running else None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- orgs and workspaces ------------------------------------------------------------------

    async def prepare_org(self, org: str, *, labels: Mapping[str, str]) -> None:
        org_dir = self._root / "orgs" / check_name("org", org)
        ensure_dir(org_dir, self._dir_mode)
        ensure_dir(org_dir / "agents", self._dir_mode)

    async def remove_org(self, org: str) -> None:
        org_dir = self._root / "orgs" / check_name("org", org)
        ids = {a for (o, a) in self._agents if o == org}
        if (org_dir / "agents").is_dir():
            ids.update(p.name for p in (org_dir / "agents").iterdir() if p.is_dir())
        ids.update(a for (o, a) in self._limiter.groups() if o == org)
        await asyncio.gather(*(self.stop(org, agent_id) for agent_id in ids))
        for agent_id in ids:
            self._agents.pop((org, agent_id), None)
        await self._close_zygote(org)
        shutil.rmtree(org_dir, ignore_errors=True)

    async def workspace_exists(self, org: str, agent_id: str) -> bool:
        return AgentPaths.of(self._root, org, agent_id).workspace.is_dir()

    async def delete_workspace(self, org: str, agent_id: str) -> None:
        """Delete the agent's workspace, logs and records.

        Raises:
            Conflict: the agent is running.
        """
        paths = AgentPaths.of(self._root, org, agent_id)
        async with self._lock(paths):
            if (await self.status(org, agent_id)).phase is Phase.RUNNING:
                raise Conflict(
                    f"agent {agent_id} is running; stop it before deleting its workspace",
                    details={"org": org, "agent_id": agent_id},
                )
            self._agents.pop((org, agent_id), None)
            paths.remove()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> RuntimeStatus:
        paths = AgentPaths.of(self._root, spec.org, spec.agent_id)
        if not spec.command:
            raise InvalidInput("an agent needs a command", details={"agent_id": spec.agent_id})
        async with self._lock(paths):
            if self._closed:
                raise Unavailable("the local runtime is closed")
            current = self._agents.get(paths.key)
            if current is not None and current.exited.is_set():
                await current.done.wait()  # it is gone; let its teardown finish first
            if current is not None and current.phase is Phase.RUNNING:
                raise Conflict(
                    f"agent {spec.agent_id} is already running (pid {current.ref.pid})",
                    details={"org": spec.org, "agent_id": spec.agent_id},
                )
            if await asyncio.to_thread(self._leftover_members, paths):
                raise Conflict(
                    f"agent {spec.agent_id} is still running from an earlier control plane; "
                    "stop it first",
                    details={"org": spec.org, "agent_id": spec.agent_id, "leftover": True},
                )
            agent = await self._launch(spec, paths)
            self._agents[paths.key] = agent
            self._spawn_task(
                self._watch(agent), f"corral.runtime.local:watch:{spec.org}/{spec.agent_id}"
            )
            return agent.status()

    async def _launch(self, spec: LaunchSpec, paths: AgentPaths) -> _Agent:
        ids = self._run_as(spec.org, spec.agent_id) if self._run_as is not None else None
        created_dir = created_ws = False
        placement: Placement | None = None
        stage = "preparing its directory"
        try:
            ensure_dir(paths.org_dir, self._dir_mode)
            ensure_dir(paths.agents_dir, self._dir_mode)
            created_dir = ensure_dir(paths.agent_dir, self._dir_mode)
            created_ws = ensure_dir(paths.workspace, 0o700, owner=ids)
            ensure_dir(paths.tmp, 0o700, owner=ids)
            ensure_dir(paths.log.parent, 0o700)
            write_private(paths.creds, spec.creds, owner=ids)
            stage = f"setting its {self._limiter.mechanism} limits"
            limits = Limits.of(spec.resources, pids=self._pids_max)
            placement = self._limiter.place(spec.org, spec.agent_id, limits)
            oom_before = placement.oom_kills()
            stage = f"running {spec.command[0]}"
            proc = await self._spawn(spec, paths, placement, ids)
            if not isinstance(proc, ZygoteChild):  # a forked child wrote it itself
                self._note(paths, f"started pid {proc.pid} ({_describe(placement)})")
        except BaseException as exc:
            if placement is not None:
                await self._remove_placement(placement)
            with contextlib.suppress(FileNotFoundError):
                paths.creds.unlink()
            if created_dir:
                paths.remove()
            elif created_ws:
                shutil.rmtree(paths.workspace, ignore_errors=True)
            details = {"org": spec.org, "agent_id": spec.agent_id}
            if isinstance(exc, ValueError):  # e.g. a NUL byte in argv or env
                raise InvalidInput(f"cannot start agent {spec.agent_id}: {exc}") from exc
            if isinstance(exc, OSError | subprocess.SubprocessError | Unavailable):
                why = exc.message if isinstance(exc, Unavailable) else str(exc)
                self._note(paths, f"could not start: {stage}: {why}")
                raise Unavailable(
                    f"cannot start agent {spec.agent_id}: {stage}: {why}", details=details
                ) from exc
            raise
        cgroups = {k: str(v) for k, v in placement.dirs.items()}
        ref = ProcessRef.of(proc.pid, mechanism=placement.mechanism.value, cgroups=cgroups)
        write_ref(paths.pidfile, ref)
        return _Agent(paths, placement, proc, ref, oom_before, self._limiter.reason)

    async def _spawn(
        self,
        spec: LaunchSpec,
        paths: AgentPaths,
        placement: Placement,
        ids: tuple[int, int] | None,
    ) -> _Child:
        env = {**self._base_env, "HOME": str(paths.workspace), "TMPDIR": str(paths.tmp)}
        env.update(spec.env)
        env["CORRAL_WORKSPACE"] = str(paths.workspace)
        env["CORRAL_CREDS_FILE"] = str(paths.creds)
        module = runnable_module(spec.command) if self._use_zygote else None
        with self._starting_in(spec.org):
            return await self._start_child(spec, paths, placement, ids, env, module)

    async def _start_child(
        self,
        spec: LaunchSpec,
        paths: AgentPaths,
        placement: Placement,
        ids: tuple[int, int] | None,
        env: dict[str, str],
        module: str | None,
    ) -> _Child:
        async with self._launching:
            zygote = await self._zygote_for(spec.org) if module is not None else None
            out = os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                with placement.join() as join:
                    if module is not None and zygote is not None and zygote.accepts(env):
                        # the child writes this line itself: it precedes all the agent prints
                        note = f"started pid {{pid}} ({_describe(placement)}, by the fork server)"
                        launch = Launch(
                            module,
                            (spec.command[0], *spec.command[3:]),
                            env,
                            str(paths.workspace),
                            ids,
                            join.rlimits,
                            note=_note_line(note),
                        )
                        return await zygote.spawn(launch, log=out, procs=join.procs)
                    setup = child_setup(join=join, parent_pid=os.getpid(), ids=ids)
                    return await asyncio.create_subprocess_exec(
                        *spec.command,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        cwd=paths.workspace,
                        env=env,
                        start_new_session=True,
                        preexec_fn=setup,
                        close_fds=True,
                    )
            finally:
                os.close(out)

    async def _zygote_for(self, org: str) -> Zygote | None:
        """``org``'s running fork server, started if there is none (or it died); None if it
        cannot be started, and the agent is then exec'd instead."""
        idle = self._zygote_idle.pop(org, None)
        if idle is not None:
            idle.cancel()
        async with self._zygote_locks.setdefault(org, asyncio.Lock()):
            if self._closed:
                raise Unavailable("the local runtime is closed")
            current = self._zygotes.get(org)
            if current is not None and current.running:
                return current
            self._zygotes.pop(org, None)
            if current is not None:
                await current.close()  # reaps it
                log.warning("the fork server %d of %s died; starting another", current.pid, org)
            try:
                self._zygotes[org] = await Zygote.start(self._base_env)
            except Unavailable as exc:
                log.warning("no fork server (%s); agents are exec'd instead", exc.message)
            return self._zygotes.get(org)

    @contextlib.contextmanager
    def _starting_in(self, org: str) -> Iterator[None]:
        """Count a start of ``org`` in flight: its server is not idle while one is."""
        self._starting[org] = self._starting.get(org, 0) + 1
        try:
            yield
        finally:
            self._starting[org] -= 1
            if not self._starting[org]:
                del self._starting[org]

    def _org_busy(self, org: str) -> bool:
        if self._starting.get(org):
            return True
        return any(o == org and not a.done.is_set() for (o, _), a in self._agents.items())

    def _zygote_maybe_idle(self, org: str) -> None:
        """After an agent of ``org`` ended: with none left running, close its server later."""
        if org not in self._zygotes or self._closed or self._org_busy(org):
            return
        old = self._zygote_idle.pop(org, None)
        if old is not None:
            old.cancel()
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if self._zygote_idle.get(org) is handle:
                del self._zygote_idle[org]
            self._spawn_task(self._close_idle_zygote(org), f"zygote-idle:{org}")

        handle = asyncio.get_running_loop().call_later(ZYGOTE_IDLE_SECONDS, fire)
        self._zygote_idle[org] = handle

    async def _close_idle_zygote(self, org: str) -> None:
        async with self._zygote_locks.setdefault(org, asyncio.Lock()):
            if self._org_busy(org) or org in self._zygote_idle:
                return  # an agent started (or is starting), or a later timer took over
            zygote = self._zygotes.pop(org, None)
            if zygote is not None:
                await zygote.close()

    async def _close_zygote(self, org: str) -> None:
        idle = self._zygote_idle.pop(org, None)
        if idle is not None:
            idle.cancel()
        async with self._zygote_locks.setdefault(org, asyncio.Lock()):
            zygote = self._zygotes.pop(org, None)
            if zygote is not None:
                await zygote.close()

    async def _watch(self, agent: _Agent) -> None:
        try:
            returncode = await agent.proc.wait()
            agent.exited.set()
            requested = agent.stopping
            oom = agent.placement.oom_kills() > agent.oom_before
            lost = isinstance(agent.proc, ZygoteChild) and agent.proc.lost
            try:
                await self._teardown(
                    agent.paths, agent.ref, agent.placement, agent.stop_deadline, agent.signalled
                )
            except Exception:  # the exit is still news; a failed cleanup must not hide it
                log.exception("agent %s/%s: cleanup after exit failed", *agent.paths.key)
            agent.exit_code, agent.detail = _exit_detail(returncode, oom=oom)
            if lost and not oom:
                agent.detail["reason"] = "fork-server-died"
            if requested:
                agent.detail["stopped"] = "true"
            agent.phase = Phase.EXITED if requested or returncode == 0 else Phase.CRASHED
            cause = "on request" if requested else "unexpectedly" if returncode else "by itself"
            how = "".join(f", {k} {v}" for k, v in agent.detail.items() if k != "stopped")
            self._note(agent.paths, f"exited {cause} with code {agent.exit_code}{how}")
            if not requested:
                self._exits.put_nowait(agent.status())
        finally:
            agent.exited.set()
            agent.done.set()
            self._zygote_maybe_idle(agent.paths.key[0])

    async def stop(self, org: str, agent_id: str, *, grace: float = 5.0) -> None:
        paths = AgentPaths.of(self._root, org, agent_id)
        async with self._lock(paths):
            agent = self._agents.get((org, agent_id))
            if agent is not None and not agent.done.is_set():
                await self._stop_child(agent, grace)
            else:
                await self._stop_leftover(paths, grace)

    async def _stop_child(self, agent: _Agent, grace: float) -> None:
        agent.stopping = True
        agent.stop_deadline = time.monotonic() + grace
        agent.signalled.update(self._signal(agent.ref, agent.placement, signal.SIGTERM))
        try:
            await asyncio.wait_for(agent.exited.wait(), timeout=grace)
        except TimeoutError:
            agent.signalled.update(self._signal(agent.ref, agent.placement, signal.SIGKILL))
        await agent.done.wait()

    async def _stop_leftover(self, paths: AgentPaths, grace: float) -> None:
        """Stop what an earlier control plane left running, with no child handle to wait on."""
        ref = read_ref(paths.pidfile)
        if ref is None:
            ref = ProcessRef(0, 0.0)
            placement = self._limiter.existing(paths.org, paths.agent_id)
        else:
            try:
                mechanism = Mechanism(ref.mechanism)
            except ValueError:
                mechanism = self._limiter.mechanism
            placement = Placement(mechanism, {k: Path(v) for k, v in ref.cgroups.items()})
        if not placement.dirs and not paths.pidfile.exists():
            return
        signalled: dict[int, float] = {}
        if await asyncio.to_thread(self._members, ref, placement):
            self._note(paths, "stopping processes left by an earlier control plane")
            signalled = self._signal(ref, placement, signal.SIGTERM)
        await self._teardown(paths, ref, placement, time.monotonic() + grace, signalled)

    def _members(self, ref: ProcessRef, placement: Placement, *, scan: bool = True) -> set[int]:
        """Every live process of the agent: its cgroup (else, with ``scan``, its session) and,
        while the leader lives, the leader and its descendants, even those that left the
        session."""
        pids = placement.members() if placement.dirs else set()
        if ref.pid:
            if scan and not placement.dirs:
                pids |= session_members(ref)
            if ref.is_alive():
                pids.add(ref.pid)
                with contextlib.suppress(psutil.Error):
                    pids.update(c.pid for c in psutil.Process(ref.pid).children(recursive=True))
        return pids

    def _leftover_members(self, paths: AgentPaths) -> set[int]:
        ref = read_ref(paths.pidfile) or ProcessRef(0, 0.0)
        placement = self._limiter.existing(paths.org, paths.agent_id)
        if ref.cgroups:
            placement.dirs = {k: Path(v) for k, v in ref.cgroups.items() if Path(v).is_dir()}
        return self._members(ref, placement)

    def _signal(self, ref: ProcessRef, placement: Placement, sig: int) -> dict[int, float]:
        """Signal the agent's processes; returns those signalled one by one (pid -> start)."""
        pgid = ref.pid if ref.pid and ref.is_alive() else None  # else the pid may be reused
        # the group signal reaches the session's processes while the leader lives
        members = self._members(ref, placement, scan=pgid is None) - {ref.pid}
        signal_all(pgid, members, sig)
        if sig == signal.SIGKILL:
            placement.kill(sig)
        return {p.pid: p.create_time for p in starts(members)}

    async def _teardown(
        self,
        paths: AgentPaths,
        ref: ProcessRef,
        placement: Placement,
        deadline: float,
        signalled: Mapping[int, float],
    ) -> None:
        """Let the rest of the tree exit until ``deadline``, kill what remains, clean up.

        ``signalled`` are processes signalled one by one that neither the cgroup nor the
        session may hold (they left it): they are waited for too.
        """

        def probe() -> set[int]:
            known = {pid for pid, t in signalled.items() if ProcessRef(pid, t).is_alive()}
            return self._members(ref, placement) | known

        alive = await wait_gone(probe, timeout=max(0.0, deadline - time.monotonic()))
        if alive:
            self._signal(ref, placement, signal.SIGKILL)
            signal_all(None, alive, signal.SIGKILL)
            alive = await wait_gone(probe, timeout=_KILL_TIMEOUT)
            if alive:
                log.warning(
                    "agent %s/%s: %s survive SIGKILL", paths.org, paths.agent_id, sorted(alive)
                )
        await self._remove_placement(placement)
        for path in (paths.pidfile, paths.creds):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _remove_placement(self, placement: Placement) -> None:
        deadline = time.monotonic() + _KILL_TIMEOUT
        while not placement.remove():
            if time.monotonic() > deadline:
                log.warning("cgroup %s is still busy; left in place", placement.dirs)
                return
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Stop every agent this runtime started, then end :meth:`exits`."""
        if self._closed:
            return
        self._closed = True
        running = [k for k, a in self._agents.items() if not a.done.is_set()]
        await asyncio.gather(*(self.stop(org, agent_id) for org, agent_id in running))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for org in list(self._zygotes):
            await self._close_zygote(org)
        self._limiter.release()
        self._exits.put_nowait(None)

    # -- observation --------------------------------------------------------------------------

    async def status(self, org: str, agent_id: str) -> RuntimeStatus:
        paths = AgentPaths.of(self._root, org, agent_id)
        agent = self._agents.get((org, agent_id))
        if agent is not None:
            return agent.status()
        return await asyncio.to_thread(self._leftover_status, paths)

    def _leftover_status(self, paths: AgentPaths) -> RuntimeStatus:
        members = self._leftover_members(paths)
        if not members:
            return RuntimeStatus(paths.org, paths.agent_id, Phase.ABSENT)
        ref = read_ref(paths.pidfile)
        leader = ref.pid if ref is not None and ref.pid in members else None
        return RuntimeStatus(
            paths.org,
            paths.agent_id,
            Phase.RUNNING,
            pid=leader,
            limits=ref.mechanism if ref is not None else self._limiter.mechanism.value,
            detail={"leftover": "true", "processes": str(len(members))},
        )

    async def list_agents(self) -> list[RuntimeStatus]:
        """Agents started here (any phase) and any left running by an earlier control plane."""
        found = [agent.status() for agent in self._agents.values()]
        keys = {(o, a) for (o, a) in self._limiter.groups()}
        for pidfile in (self._root / "orgs").glob("*/agents/*/agent.pid"):
            keys.add((pidfile.parent.parent.parent.name, pidfile.parent.name))
        for org, agent_id in sorted(keys - self._agents.keys()):
            with contextlib.suppress(InvalidInput):
                status = await asyncio.to_thread(
                    self._leftover_status, AgentPaths.of(self._root, org, agent_id)
                )
                if status.phase is not Phase.ABSENT:
                    found.append(status)
        return found

    async def logs(self, org: str, agent_id: str, *, tail: int = 200) -> str:
        paths = AgentPaths.of(self._root, org, agent_id)
        return await asyncio.to_thread(tail_lines, paths.log, tail)

    async def usage(self, org: str, agent_id: str) -> AgentUsage | None:
        """CPU seconds and memory of the agent's process tree, or None if it is not running."""
        paths = AgentPaths.of(self._root, org, agent_id)
        agent = self._agents.get((org, agent_id))
        if agent is not None and agent.phase is not Phase.RUNNING:
            return None

        def measure() -> AgentUsage | None:
            if agent is not None:
                return tree_usage(self._members(agent.ref, agent.placement))
            return tree_usage(self._leftover_members(paths))

        return await asyncio.to_thread(measure)

    async def _exit_stream(self) -> AsyncIterator[RuntimeStatus]:
        while (item := await self._exits.get()) is not None:
            yield item

    def exits(self) -> AsyncIterator[RuntimeStatus]:
        """Exits nobody asked for (``CRASHED``, or ``EXITED`` with code 0); ends on close."""
        return self._exit_stream()

    # -- plumbing -----------------------------------------------------------------------------

    def _lock(self, paths: AgentPaths) -> asyncio.Lock:
        return self._locks.setdefault(paths.key, asyncio.Lock())

    def _note(self, paths: AgentPaths, text: str) -> None:
        """Append a line of the runtime's own to the agent's log."""
        with contextlib.suppress(OSError), paths.log.open("a", encoding="utf-8") as f:
            f.write(_note_line(text))

    def _spawn_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(_guard(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _note_line(text: str) -> str:
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    return f"[corral {stamp}] {text}\n"


def _describe(placement: Placement) -> str:
    return ", ".join(f"{k} {v}" for k, v in placement.describe().items() if "." not in k)


async def _guard(coro: Coroutine[Any, Any, None], name: str) -> None:
    """Run a background task so that its failure is logged, never silently dropped."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task %s failed", name)
