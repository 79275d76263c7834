"""LocalProcessRuntime: each agent is an OS process group on this machine.

This is the embedded shape's runtime, so it must be as careful as a container runtime with
only the kernel's help:

- isolation: the sandbox (:mod:`.confinement`, on by default: each org's own uid as root, a
  user namespace otherwise; PID, mount and IPC namespaces; Landlock; seccomp), a 0700
  workspace per agent, credentials in a 0600 file only the agent sees (never in the
  environment or argv), an environment built from nothing (the control plane's own variables,
  which may hold platform secrets, are never inherited), and memory/CPU limits (see
  :mod:`.limits`). With the sandbox off, agents of one uid can read each other's files.
- supervision: a named, guarded task per agent awaits its exit; an exit nobody asked for is
  ``CRASHED`` (or ``EXITED`` for code 0) and is published on :meth:`exits`
  (:mod:`.supervision`).
- no orphans for long: with ``adopt_seconds`` (the platform gives 60 s), agents started from a fork
  server outlive a control plane that dies or is deposed for that long, and the next one
  adopts them (:mod:`.adoption`); nobody adopting them in time ends them. Without it, and
  agents started by exec, die with the control plane (``PR_SET_PDEATHSIG``). ``agent.pid``
  lets a restarted control plane find and stop anything left behind (:mod:`.leftovers`);
  stopping an agent stops its tree.

How an agent is started, by exec or from its organization's own fork server, is
:mod:`.launching`'s; the fork servers themselves are :mod:`.forkpool`'s. This module ties those
together behind :class:`~corral.runtime.base.AgentRuntime`: one lock per agent, so starts and
stops of one agent never interleave, and what the runtime reports (status, usage, logs).

Agents (and the fork server) are started from the event loop's thread, and the kernel's
parent-death signal follows that thread: run the runtime on a loop that lives as long as the
control plane.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from corral.domain.errors import Conflict, InvalidInput, Unavailable
from corral.runtime.base import LaunchSpec, Phase, RuntimeStatus
from corral.runtime.local import adoption, leftovers, supervision
from corral.runtime.local.confinement import Confinement, OrgIds
from corral.runtime.local.forkpool import ForkServerPool
from corral.runtime.local.launching import Launcher, RunAs, default_env
from corral.runtime.local.limits import Limiter, Mechanism, Placement
from corral.runtime.local.probing import probe
from corral.runtime.local.processes import AgentUsage, children_map, tree_usage
from corral.runtime.local.supervision import Agent
from corral.runtime.local.workspaces import AgentPaths, check_name, ensure_dir, note, tail_lines

__all__ = ["LocalProcessRuntime", "RunAs"]

log = logging.getLogger(__name__)


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
        sandbox: how agents are confined (:class:`Confinement`), or a mode for
            :meth:`Confinement.detect` (``"auto"``: strict where this host allows every
            layer). As root without ``run_as``, each org gets a uid of its own (:class:`OrgIds`).
        adopt_seconds: agents started from a fork server outlive this control plane for this
            long, for another one to :meth:`adopt` (0: they die with it).

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
        sandbox: Confinement | str = "auto",
        adopt_seconds: float = 0.0,
    ) -> None:
        self._root = Path(root).absolute()
        confinement = sandbox if isinstance(sandbox, Confinement) else Confinement.detect(sandbox)
        self._confinement = confinement
        if run_as is None and confinement.enabled and os.geteuid() == 0:
            run_as = OrgIds()  # as root, no agent runs as root: each org gets its own uid
        # agents of other uids traverse the runtime's directories only without a mount
        # namespace of their own: with one, the sandbox binds their workspace in for them
        report = confinement.report
        binds = confinement.enabled and report is not None and report.namespaces
        self._dir_mode = 0o711 if run_as is not None and not binds else 0o700
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
        base_env = dict(base_env if base_env is not None else default_env())
        self._agents: dict[tuple[str, str], Agent] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._exits: asyncio.Queue[RuntimeStatus | None] = asyncio.Queue()
        self._closed = False
        self._adopt_seconds = adopt_seconds
        self._keeping: asyncio.Task[None] | None = None
        self._forkservers = ForkServerPool(
            base_env, running=self._running, spawn=self._spawn_task, orphan=adopt_seconds
        )
        self._launcher = Launcher(
            limiter=limiter,
            pids_max=pids_max,
            dir_mode=self._dir_mode,
            base_env=base_env,
            run_as=run_as,
            forkservers=self._forkservers,
            use_forkservers=zygote and hasattr(os, "memfd_create"),
            confinement=confinement,
        )

    @property
    def sandbox(self) -> Confinement:
        """How this runtime confines its agents."""
        return self._confinement

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
        return self._forkservers.pid(org)

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
        await self._forkservers.close_org(org)
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
            if await asyncio.to_thread(leftovers.leftover_members, self._limiter, paths):
                raise Conflict(
                    f"agent {spec.agent_id} is still running from an earlier control plane; "
                    "stop it first",
                    details={"org": spec.org, "agent_id": spec.agent_id, "leftover": True},
                )
            agent = await self._launcher.launch(spec, paths)
            self._agents[paths.key] = agent
            self._spawn_task(
                self._watch(agent), f"corral.runtime.local:watch:{spec.org}/{spec.agent_id}"
            )
            return agent.status()

    async def _watch(self, agent: Agent) -> None:
        try:
            await supervision.watch(agent, self._exits.put_nowait)
        finally:
            self._forkservers.maybe_idle(agent.paths.org)

    async def stop(self, org: str, agent_id: str, *, grace: float = 5.0) -> None:
        paths = AgentPaths.of(self._root, org, agent_id)
        async with self._lock(paths):
            agent = self._agents.get((org, agent_id))
            if agent is not None and not agent.done.is_set():
                await supervision.stop(agent, grace)
            else:
                await leftovers.stop_leftover(self._limiter, paths, grace)

    async def adopt(self, org: str, agent_id: str) -> RuntimeStatus | None:
        """Supervise an agent another control plane started and left running, without
        restarting it; None if it cannot be adopted (not running, another host's, or no fork
        server keeps it), and it is then stopped or restarted as a leftover."""
        paths = AgentPaths.of(self._root, org, agent_id)
        async with self._lock(paths):
            if self._closed:
                raise Unavailable("the local runtime is closed")
            current = self._agents.get(paths.key)
            if current is not None and not current.exited.is_set():
                return current.status()
            found = await asyncio.to_thread(adoption.find, paths.pidfile)
            if found is None:
                return None
            ref, child = found
            try:
                mechanism = Mechanism(ref.mechanism)
            except ValueError:
                mechanism = self._limiter.mechanism
            placement = Placement(mechanism, {k: Path(v) for k, v in ref.cgroups.items()})
            agent = Agent(paths, placement, child, ref, placement.oom_kills(), self._limiter.reason)
            agent.detail["adopted"] = "true"
            self._agents[paths.key] = agent
            note(paths, f"adopted pid {ref.pid} (kept by fork server {ref.keeper})")
            self._spawn_task(self._watch(agent), f"corral.runtime.local:watch:{org}/{agent_id}")
            if self._keeping is None:
                self._keeping = asyncio.create_task(
                    _guard(self._keep(), "corral.runtime.local:keep"),
                    name="corral.runtime.local:keep",
                )
                self._tasks.add(self._keeping)
            return agent.status()

    async def _keep(self) -> None:
        """Tell the keepers of the adopted agents, every quarter of their window, that their
        children are supervised."""
        every = max(self._adopt_seconds / 4, 0.5) if self._adopt_seconds else 5.0
        while True:
            await asyncio.sleep(every)
            refs = [
                a.ref
                for a in self._agents.values()
                if isinstance(a.proc, adoption.AdoptedChild) and not a.exited.is_set()
            ]
            await asyncio.to_thread(adoption.keep, refs)

    async def detach(self) -> None:
        """Stop supervising without stopping what can be adopted (this control plane lost its
        lease, and another one leads): agents kept by a fork server run on for it; the others
        are stopped, as :meth:`close` does. Ends :meth:`exits`."""
        if self._closed:
            return
        self._closed = True
        self._forkservers.shut()
        kept = {k for k, a in self._agents.items() if a.ref.keeper and not a.done.is_set()}
        running = [k for k, a in self._agents.items() if not a.done.is_set() and k not in kept]
        await asyncio.gather(*(self.stop(org, agent_id) for org, agent_id in running))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._forkservers.detach()
        for org, agent_id in sorted(kept):
            note(AgentPaths.of(self._root, org, agent_id), "left running for another leader")
        self._limiter.release()
        self._exits.put_nowait(None)

    async def close(self) -> None:
        """Stop every agent this runtime started, then end :meth:`exits`."""
        if self._closed:
            return
        self._closed = True
        self._forkservers.shut()
        running = [k for k, a in self._agents.items() if not a.done.is_set()]
        await asyncio.gather(*(self.stop(org, agent_id) for org, agent_id in running))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._forkservers.close()
        self._limiter.release()
        self._exits.put_nowait(None)

    # -- observation --------------------------------------------------------------------------

    async def status(self, org: str, agent_id: str) -> RuntimeStatus:
        paths = AgentPaths.of(self._root, org, agent_id)
        agent = self._agents.get((org, agent_id))
        if agent is not None:
            return agent.status()
        return await asyncio.to_thread(leftovers.leftover_status, self._limiter, paths)

    async def list_agents(self) -> list[RuntimeStatus]:
        """Agents started here (any phase) and any left running by an earlier control plane."""
        found = [agent.status() for agent in self._agents.values()]
        keys = leftovers.leftover_keys(self._root, self._limiter) - self._agents.keys()
        found += await leftovers.leftover_statuses(self._root, self._limiter, sorted(keys))
        return found

    async def logs(self, org: str, agent_id: str, *, tail: int = 200) -> str:
        paths = AgentPaths.of(self._root, org, agent_id)
        return await asyncio.to_thread(tail_lines, paths.log, tail)

    async def usage(self, org: str, agent_id: str) -> AgentUsage | None:
        """CPU seconds and memory of the agent's process tree, or None if it is not running."""
        return (await self.usage_many([(org, agent_id)]))[agent_id]

    async def usage_many(
        self, agents: Sequence[tuple[str, str]], *, uss: bool = True
    ) -> dict[str, AgentUsage | None]:
        """:meth:`usage` of each ``(org, agent id)``, by agent id, from one read of the
        process table (one read per agent made a metrics scrape cost agents × processes);
        without ``uss`` (metrics do not show it) each process's memory map is not read."""

        def measure() -> dict[str, AgentUsage | None]:
            kids = children_map()
            out: dict[str, AgentUsage | None] = {}
            for org, agent_id in agents:
                agent = self._agents.get((org, agent_id))
                if agent is None:
                    paths = AgentPaths.of(self._root, org, agent_id)
                    pids = leftovers.leftover_members(self._limiter, paths, kids)
                elif agent.phase is Phase.RUNNING:
                    pids = supervision.members(agent.ref, agent.placement, kids=kids)
                else:
                    out[agent_id] = None
                    continue
                out[agent_id] = tree_usage(pids, kids, uss=uss)
            return out

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

    def _running(self, org: str) -> bool:
        """Whether any agent of ``org`` started here has not yet been torn down."""
        return any(o == org and not a.done.is_set() for (o, _), a in self._agents.items())

    def _spawn_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(_guard(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _guard(coro: Coroutine[Any, Any, None], name: str) -> None:
    """Run a background task so that its failure is logged, never silently dropped."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task %s failed", name)
