"""Starting one local agent: its directories, credentials and limits, then its process.

Two ways to start an agent, with the same result. A command ``[sys.executable, "-m", MODULE]``
(the built-in agent's) goes to its organization's fork server (:mod:`.forkpool`): a process
that has already imported the agent-side modules and forks a child per agent, so neither the
control plane's memory is copied nor ~90 ms of imports repeated. Any other command (or any
command, with ``zygote=False``) is forked and exec'd from here, through the sandbox's
trampoline (:mod:`.confining`). Either way the new process joins its limits before it runs a
line of the agent, leads a session of its own, is confined by the sandbox (its organization's
uid, its own namespaces, Landlock, seccomp: :mod:`.confinement`) unless that is off, gets an
environment built from nothing (the control plane's own variables, which may hold platform
secrets, are never inherited) and dies with its parent.

Output goes straight from the agent to ``logs/agent.log`` (no pipe through the control plane),
so logs survive a control plane restart and a chatty agent cannot block on a full pipe.

A start that fails leaves nothing behind: no cgroup, no credentials file, and no directory
that it created.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from corral.domain.errors import Conflict, InvalidInput, Unavailable
from corral.runtime.base import LaunchSpec
from corral.runtime.local.confinement import Confinement
from corral.runtime.local.confining import confined_exec
from corral.runtime.local.forkbox import Box
from corral.runtime.local.forkclient import ZygoteChild, runnable_module
from corral.runtime.local.forkpool import ForkServerPool
from corral.runtime.local.forkserver import Launch
from corral.runtime.local.limits import Limiter, Limits, Placement
from corral.runtime.local.processes import ProcessRef, child_setup, write_ref
from corral.runtime.local.supervision import Agent, Child, remove_placement
from corral.runtime.local.workspaces import (
    AgentPaths,
    ensure_dir,
    note,
    note_line,
    reown,
    write_private,
)
from corral.runtime.sandbox import SandboxPolicy

__all__ = ["RunAs", "Launcher", "default_env"]

RunAs = Callable[[str, str], tuple[int, int] | None]
"""``(org, agent_id) -> (uid, gid)`` to run that agent under, or None for the runtime's own."""

_LAUNCHING = 16  # starts past set-up at once: each holds its log and cgroup files open
#: of those, at most this many for one organization, so that one org starting fifty agents
#: cannot hold every start slot while another org's single agent waits behind them
_LAUNCHING_PER_ORG = 4


class KeySlots:
    """At most ``limit`` holders per key at once; a key nobody holds costs nothing."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, tuple[asyncio.Semaphore, int]] = {}

    def holders(self, key: str) -> int:
        """How many hold or wait for a slot of ``key``."""
        return self._held.get(key, (None, 0))[1]

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        sem, users = self._held.get(key) or (asyncio.Semaphore(self.limit), 0)
        self._held[key] = (sem, users + 1)
        try:
            async with sem:
                yield
        finally:
            sem, users = self._held[key]
            if users <= 1:
                del self._held[key]
            else:
                self._held[key] = (sem, users - 1)


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


class Launcher:
    """Starts agents for one runtime; see the module's docstring for how.

    Args:
        limiter: the host's limits mechanism.
        pids_max: cap on processes per agent where a pids controller is available.
        dir_mode: the mode of the runtime's own directories (org, agents, agent).
        base_env: the variables every agent gets.
        run_as: which uid/gid each agent runs as (None: the runtime's own).
        forkservers: the orgs' fork servers.
        use_forkservers: start ``[sys.executable, "-m", MODULE]`` commands from them; False
            forks and execs every agent from here.
        confinement: the sandbox every agent is started in (see :mod:`.confinement`).
    """

    def __init__(
        self,
        *,
        limiter: Limiter,
        pids_max: int | None,
        dir_mode: int,
        base_env: Mapping[str, str],
        run_as: RunAs | None,
        forkservers: ForkServerPool,
        use_forkservers: bool,
        confinement: Confinement,
    ) -> None:
        self._limiter = limiter
        self._pids_max = pids_max
        self._dir_mode = dir_mode
        self._base_env = dict(base_env)
        self._run_as = run_as
        self._forkservers = forkservers
        self._use_forkservers = use_forkservers
        self._confinement = confinement
        self._launching = asyncio.Semaphore(_LAUNCHING)
        self._org_launching = KeySlots(_LAUNCHING_PER_ORG)

    async def launch(self, spec: LaunchSpec, paths: AgentPaths) -> Agent:
        """Prepare the agent's files and limits and start its process.

        Raises:
            InvalidInput: the command or environment holds what no exec accepts.
            Unavailable: a step failed; nothing of the start is left behind.
        """
        ids = self._run_as(spec.org, spec.agent_id) if self._run_as is not None else None
        env = self._env(spec, paths)
        # decided before anything of the agent exists: a refusal leaves nothing behind
        policy = self._confinement.policy(paths, ids, env)
        created_dir = created_ws = False
        placement: Placement | None = None
        stage = "preparing its directory"
        try:
            # boxed, the org's fork server (its uid's group) traverses these, nobody else
            mode, owner = self._dir_mode, None
            if ids is not None and self._boxed(ids, policy):
                mode, owner = 0o710, (0, ids[1])
            ensure_dir(paths.org_dir, mode, owner=owner)
            ensure_dir(paths.agents_dir, mode, owner=owner)
            created_dir = ensure_dir(paths.agent_dir, mode, owner=owner)
            if ids is not None:  # kept from a run as another uid: the agent's own again
                reown(paths.workspace, ids)
                reown(paths.tmp, ids)
            created_ws = ensure_dir(paths.workspace, 0o700, owner=ids)
            ensure_dir(paths.tmp, 0o700, owner=ids)
            ensure_dir(paths.log.parent, 0o700)
            write_private(paths.creds, spec.creds, owner=ids)
            stage = f"setting its {self._limiter.mechanism} limits"
            limits = Limits.of(spec.resources, pids=self._pids_max)
            placement = self._limiter.place(spec.org, spec.agent_id, limits)
            oom_before = placement.oom_kills()
            stage = f"running {spec.command[0]}"
            proc = await self._spawn(spec, paths, placement, ids, env, policy)
            if not isinstance(proc, ZygoteChild):  # a forked child wrote it itself
                note(paths, f"started pid {proc.pid} ({_describe(placement)})")
        except BaseException as exc:
            if placement is not None:
                await remove_placement(placement)
            with contextlib.suppress(FileNotFoundError):
                paths.creds.unlink()
            if created_dir:
                paths.remove()
            elif created_ws:
                shutil.rmtree(paths.workspace, ignore_errors=True)
            details = {"org": spec.org, "agent_id": spec.agent_id}
            if isinstance(exc, ValueError):  # e.g. a NUL byte in argv or env
                raise InvalidInput(f"cannot start agent {spec.agent_id}: {exc}") from exc
            if isinstance(exc, FileNotFoundError | PermissionError) and proc_stage(stage):
                note(paths, f"could not start: {stage}: {exc.strerror}")
                raise Conflict(  # the host lacks it: nothing the schema could have said
                    f"cannot start agent {spec.agent_id}: its command {spec.command[0]!r} "
                    f"cannot be run ({exc.strerror}); give a path or a program on PATH",
                    details={**details, "command": spec.command[0]},
                ) from exc
            if isinstance(exc, OSError | subprocess.SubprocessError | Unavailable):
                why = exc.message if isinstance(exc, Unavailable) else str(exc)
                note(paths, f"could not start: {stage}: {why}")
                raise Unavailable(
                    f"cannot start agent {spec.agent_id}: {stage}: {why}", details=details
                ) from exc
            raise
        cgroups = {k: str(v) for k, v in placement.dirs.items()}
        keeper = proc.keeper if isinstance(proc, ZygoteChild) else 0
        ref = ProcessRef.of(
            proc.pid, mechanism=placement.mechanism.value, cgroups=cgroups, keeper=keeper
        )
        write_ref(paths.pidfile, ref)
        level = self._confinement.level() if policy is not None else "off"
        return Agent(paths, placement, proc, ref, oom_before, self._limiter.reason, sandbox=level)

    @staticmethod
    def _boxed(ids: tuple[int, int] | None, policy: SandboxPolicy | None) -> bool:
        """Whether the org's fork server runs as the org's uid: as root, with a sandbox that
        builds each agent's mounts (so the server needs to see only the org's directory)."""
        return ids is not None and policy is not None and policy.mount_namespace

    def _box(
        self, paths: AgentPaths, ids: tuple[int, int] | None, policy: SandboxPolicy | None
    ) -> Box | None:
        if ids is None or policy is None or not self._boxed(ids, policy):
            return None
        keep = (*policy.read_only, *policy.devices, os.path.realpath(paths.org_dir))
        return Box(ids[0], ids[1], tuple(keep))

    def _env(self, spec: LaunchSpec, paths: AgentPaths) -> dict[str, str]:
        env = {**self._base_env, "HOME": str(paths.workspace), "TMPDIR": str(paths.tmp)}
        env.update(spec.env)
        env["CORRAL_WORKSPACE"] = str(paths.workspace)
        env["CORRAL_CREDS_FILE"] = str(paths.creds)
        return env

    async def _spawn(
        self,
        spec: LaunchSpec,
        paths: AgentPaths,
        placement: Placement,
        ids: tuple[int, int] | None,
        env: dict[str, str],
        policy: SandboxPolicy | None,
    ) -> Child:
        module = runnable_module(spec.command) if self._use_forkservers else None
        with self._forkservers.starting(spec.org):
            async with self._org_launching.slot(spec.org), self._launching:
                box = self._box(paths, ids, policy)
                zygote = await self._forkservers.server_for(spec.org, box=box) if module else None
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                out = os.open(paths.log, flags, 0o600)
                try:
                    with placement.join() as join:
                        if module is not None and zygote is not None and zygote.accepts(env):
                            # the child writes this line itself: it precedes all agent prints
                            line = (
                                f"started pid {{pid}} ({_describe(placement)}, by the fork server)"
                            )
                            launch = Launch(
                                module,
                                (spec.command[0], *spec.command[3:]),
                                env,
                                str(paths.workspace),
                                ids if policy is None else None,
                                join.rlimits,
                                note=note_line(line),
                                sandbox=policy.encode().decode() if policy is not None else "",
                            )
                            return await zygote.spawn(
                                launch,
                                log=out,
                                procs=join.procs,
                                pid_namespace=policy is not None and policy.pid_namespace,
                            )
                        if policy is not None:
                            return await confined_exec(spec.command, policy, join, out, paths, env)
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


def _describe(placement: Placement) -> str:
    return ", ".join(f"{k} {v}" for k, v in placement.describe().items() if "." not in k)


def proc_stage(stage: str) -> bool:
    """Whether a launch failed while running the agent's own command."""
    return stage.startswith("running ")
