"""Agents an earlier control plane left running: finding them, reporting them, stopping them.

A control plane that restarts has no child handle on the agents it started before, but they
may still run (a crash of the control plane's own, before the kernel's parent-death signal
reached them) or have left their cgroup and records behind. What is known of such an agent is
what it left on disk: ``agent.pid`` (pid, start time, cgroups) and its cgroup directories.
These are enough to report it as running (``leftover``), to refuse a second start of it, and
to stop its whole tree, so that reconciliation can decide what to do with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from corral.domain.errors import InvalidInput
from corral.runtime.base import Phase, RuntimeStatus
from corral.runtime.local.limits import Limiter, Mechanism, Placement
from corral.runtime.local.processes import Children, ProcessRef, read_ref
from corral.runtime.local.supervision import members, signal_agent, teardown
from corral.runtime.local.workspaces import AgentPaths, note

__all__ = [
    "leftover_keys",
    "leftover_members",
    "leftover_status",
    "leftover_statuses",
    "stop_leftover",
]


def leftover_members(limiter: Limiter, paths: AgentPaths, kids: Children | None = None) -> set[int]:
    """Every live process of an agent that has no handle here (none if it is not running)."""
    ref = read_ref(paths.pidfile) or ProcessRef(0, 0.0)
    placement = limiter.existing(paths.org, paths.agent_id)
    if ref.cgroups:
        placement.dirs = {k: Path(v) for k, v in ref.cgroups.items() if Path(v).is_dir()}
    return members(ref, placement, kids=kids)


def leftover_status(limiter: Limiter, paths: AgentPaths) -> RuntimeStatus:
    """``RUNNING`` (marked ``leftover``) while any process of the agent lives, else ``ABSENT``."""
    found = leftover_members(limiter, paths)
    if not found:
        return RuntimeStatus(paths.org, paths.agent_id, Phase.ABSENT)
    ref = read_ref(paths.pidfile)
    leader = ref.pid if ref is not None and ref.pid in found else None
    return RuntimeStatus(
        paths.org,
        paths.agent_id,
        Phase.RUNNING,
        pid=leader,
        limits=ref.mechanism if ref is not None else limiter.mechanism.value,
        detail={"leftover": "true", "processes": str(len(found))},
    )


def leftover_keys(root: Path, limiter: Limiter) -> set[tuple[str, str]]:
    """``(org, agent_id)`` of every agent with a cgroup or a pid file, running or not."""
    keys = set(limiter.groups())
    for pidfile in (root / "orgs").glob("*/agents/*/agent.pid"):
        keys.add((pidfile.parent.parent.parent.name, pidfile.parent.name))
    return keys


async def leftover_statuses(
    root: Path, limiter: Limiter, keys: Iterable[tuple[str, str]]
) -> list[RuntimeStatus]:
    """The status of each of ``keys`` that is still running, in order; invalid names skipped."""
    found: list[RuntimeStatus] = []
    for org, agent_id in keys:
        with contextlib.suppress(InvalidInput):
            paths = AgentPaths.of(root, org, agent_id)
            status = await asyncio.to_thread(leftover_status, limiter, paths)
            if status.phase is not Phase.ABSENT:
                found.append(status)
    return found


async def stop_leftover(limiter: Limiter, paths: AgentPaths, grace: float) -> None:
    """Stop what an earlier control plane left running, with no child handle to wait on."""
    ref = read_ref(paths.pidfile)
    if ref is None:
        ref = ProcessRef(0, 0.0)
        placement = limiter.existing(paths.org, paths.agent_id)
    else:
        try:
            mechanism = Mechanism(ref.mechanism)
        except ValueError:
            mechanism = limiter.mechanism
        placement = Placement(mechanism, {k: Path(v) for k, v in ref.cgroups.items()})
    if not placement.dirs and not paths.pidfile.exists():
        return
    signalled: dict[int, float] = {}
    if await asyncio.to_thread(members, ref, placement):
        note(paths, "stopping processes left by an earlier control plane")
        signalled = signal_agent(ref, placement, signal.SIGTERM)
    await teardown(paths, ref, placement, time.monotonic() + grace, signalled)
