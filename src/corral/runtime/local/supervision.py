"""Supervision of local agents: awaiting each one's exit, stopping it, tearing its tree down.

Each agent the runtime starts gets a named, guarded task that awaits its leader's exit
(:func:`watch`); an exit nobody asked for is ``CRASHED`` (or ``EXITED`` for code 0) and is
reported to the runtime, which publishes it. Stopping (:func:`stop`) is SIGTERM, then SIGKILL
after the grace period, and in both cases the rest of the tree is waited for and killed if it
stays (:func:`teardown`): the cgroup when there is one, else the session, plus any process that
was signalled one by one after it left both. Only then are the agent's cgroup, pid file and
credentials removed, so a restart never races a previous run's processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from corral.runtime.base import Phase, RuntimeStatus
from corral.runtime.local.adoption import AdoptedChild
from corral.runtime.local.forkclient import ZygoteChild
from corral.runtime.local.limits import Placement
from corral.runtime.local.processes import (
    Children,
    ProcessRef,
    descendants,
    session_members,
    signal_all,
    starts,
    tree,
    wait_gone,
)
from corral.runtime.local.workspaces import AgentPaths, note

__all__ = [
    "Agent",
    "Child",
    "exit_detail",
    "members",
    "remove_placement",
    "signal_agent",
    "stop",
    "teardown",
    "watch",
]

log = logging.getLogger(__name__)

KILL_TIMEOUT = 5.0  # after SIGKILL; only a process stuck in the kernel takes longer


class Child(Protocol):
    """An agent's leader as started: an ``asyncio`` subprocess or a fork server's child."""

    @property
    def pid(self) -> int: ...

    async def wait(self) -> int: ...


@dataclass(eq=False, slots=True)
class Agent:
    """One agent the runtime started, from its start until its teardown is done."""

    paths: AgentPaths
    placement: Placement
    proc: Child
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
    sandbox: str = ""  # the confinement it runs under ("strict", "best-effort (...)", "off")

    def status(self) -> RuntimeStatus:
        running = self.phase is Phase.RUNNING
        detail = {**self.placement.describe(), **self.detail}
        if self.note:
            detail["limits_note"] = self.note
        if self.sandbox:
            detail["sandbox"] = self.sandbox
        return RuntimeStatus(
            self.paths.org,
            self.paths.agent_id,
            self.phase,
            pid=self.ref.pid if running else None,
            exit_code=self.exit_code,
            limits=self.placement.mechanism.value,
            detail=detail,
        )


def exit_detail(returncode: int, *, oom: bool) -> tuple[int, dict[str, str]]:
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


async def watch(agent: Agent, report: Callable[[RuntimeStatus], None]) -> None:
    """Await the agent's exit, tear down what is left of it and record how it ended;
    ``report`` hears of every exit nobody asked for."""
    try:
        returncode = await agent.proc.wait()
        agent.exited.set()
        requested = agent.stopping
        oom = agent.placement.oom_kills() > agent.oom_before
        lost = isinstance(agent.proc, ZygoteChild) and agent.proc.lost
        adopted = isinstance(agent.proc, AdoptedChild)
        try:
            await teardown(
                agent.paths, agent.ref, agent.placement, agent.stop_deadline, agent.signalled
            )
        except Exception:  # the exit is still news; a failed cleanup must not hide it
            log.exception("agent %s/%s: cleanup after exit failed", *agent.paths.key)
        agent.exit_code, agent.detail = exit_detail(returncode, oom=oom)
        if lost and not oom:
            agent.detail["reason"] = "fork-server-died"
        if adopted and not requested:
            agent.detail["status"] = "unknown (adopted: its parent alone learns it)"
        if requested:
            agent.detail["stopped"] = "true"
        agent.phase = Phase.EXITED if requested or returncode == 0 else Phase.CRASHED
        cause = "on request" if requested else "unexpectedly" if returncode else "by itself"
        how = "".join(f", {k} {v}" for k, v in agent.detail.items() if k != "stopped")
        note(agent.paths, f"exited {cause} with code {agent.exit_code}{how}")
        if not requested:
            report(agent.status())
    finally:
        agent.exited.set()
        agent.done.set()


async def stop(agent: Agent, grace: float) -> None:
    """SIGTERM, SIGKILL after ``grace``; returns once :func:`watch` has torn the agent down."""
    agent.stopping = True
    agent.stop_deadline = time.monotonic() + grace
    agent.signalled.update(signal_agent(agent.ref, agent.placement, signal.SIGTERM))
    try:
        await asyncio.wait_for(agent.exited.wait(), timeout=grace)
    except TimeoutError:
        agent.signalled.update(signal_agent(agent.ref, agent.placement, signal.SIGKILL))
    await agent.done.wait()


def members(
    ref: ProcessRef, placement: Placement, *, scan: bool = True, kids: Children | None = None
) -> set[int]:
    """Every live process of the agent: its cgroup (else, with ``scan``, its session) and,
    while the leader lives, the leader and its descendants, even those that left the
    session (found in ``kids`` when given: a map read once for many agents; else from the
    leader's own children down, so that stopping one agent does not read every process)."""
    pids = placement.members() if placement.dirs else set()
    if ref.pid:
        if scan and not placement.dirs:
            pids |= session_members(ref)
        if ref.is_alive():
            pids.add(ref.pid)
            pids.update(tree(ref.pid) if kids is None else descendants(ref.pid, kids))
    return pids


def signal_agent(ref: ProcessRef, placement: Placement, sig: int) -> dict[int, float]:
    """Signal the agent's processes; returns those signalled one by one (pid -> start)."""
    pgid = ref.pid if ref.pid and ref.is_alive() else None  # else the pid may be reused
    # the group signal reaches the session's processes while the leader lives
    others = members(ref, placement, scan=pgid is None) - {ref.pid}
    signal_all(pgid, others, sig)
    if sig == signal.SIGKILL:
        placement.kill(sig)
    return {p.pid: p.create_time for p in starts(others)}


async def teardown(
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
        return members(ref, placement) | known

    alive = await wait_gone(probe, timeout=max(0.0, deadline - time.monotonic()))
    if alive:
        signal_agent(ref, placement, signal.SIGKILL)
        signal_all(None, alive, signal.SIGKILL)
        alive = await wait_gone(probe, timeout=KILL_TIMEOUT)
        if alive:
            log.warning("agent %s/%s: %s survive SIGKILL", paths.org, paths.agent_id, sorted(alive))
    await remove_placement(placement)
    for path in (paths.pidfile, paths.creds):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def remove_placement(placement: Placement) -> None:
    """Remove the agent's cgroup once its last process has left it (or give up, and say so)."""
    deadline = time.monotonic() + KILL_TIMEOUT
    while not placement.remove():
        if time.monotonic() > deadline:
            log.warning("cgroup %s is still busy; left in place", placement.dirs)
            return
        await asyncio.sleep(0.01)
