"""Agent lifecycle through the controller, with every real part: SQLite, the platform's own
nats-server, the local runtime and the built-in agent as an OS process, forked by the local
runtime's fork server (``--no-zygote``: forked from the control plane and exec'd as a fresh
interpreter, as every agent was started before the fork server).

Measured, one figure per line next to its target:

- provision → ready: ``Controller.provision`` until the agent reported ready
  (``wait_running``), one agent after another; p50 and p99 (the first provision also starts
  the fork server).
- a burst: 100 agents provisioned at once, wall time until the last one is ready.
- pause: ``Controller.pause`` (checkpoint over the bus, stop the process, revoke, release)
  until it returns, and resume → ready (``resume`` until the agent reported ready again).
- idle memory: USS of each idle agent's process tree, from ``LocalProcessRuntime.usage``.
- scale-up of a declared role: ``--scale-tasks`` (200) tasks submitted at once for a role with
  no agent yet and ``maxAgents: 20`` (the built-in agent, one slot, each task sleeping
  ``--scale-sleep`` seconds): time until all 20 agents are busy, and until the queue is
  drained; how many agents the queue started (exactly ``maxAgents``, never more).

The peer is Ray: the figures from the performance notes (Ray 2.60 on a 2-core machine like
this one) are always printed; where ``ray`` is importable the same figures are measured in
this run (an actor created one at a time until its first ping answers; 100 actors at once
until all answer; each actor's USS).

The sandbox is on by default (as in ``corral up``); ``--sandbox both`` (the default) measures
with it on and then off in the same run and prints both tables, so its cost shows side by side.

Run: ``python benchmarks/agents.py [--sequential 30] [--burst 100] [--cycles 10] [--no-ray]
[--no-zygote] [--sandbox both|on|off] [--scale-tasks 200] [--scale-max 20] [--scale-sleep 0.5]``.
Everything runs on loopback in a temporary data directory, and nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import _common as c
from _phases import Phases

from corral.control.platform import Platform
from corral.domain.admission import ContainerRequest
from corral.domain.roles import role_from_wire
from corral.domain.tasks import NO_REQUIREMENTS, Priority, TaskState
from corral.domain.tenancy import Organization
from corral.runtime.local import LocalProcessRuntime

# with the sandbox on (every agent in its own uid, namespaces, Landlock and seccomp)
TARGET_PROVISION_P50 = 0.050
TARGET_BURST_100 = 3.0
TARGET_RESUME_P50 = 0.060
TARGET_PAUSE_P50 = 0.050
TARGET_IDLE_MIB = 10.0

RAY_NOTES = {
    "create p50": 0.309,
    "create p99": 0.540,
    "burst 100": 24.6,
    "uss": 42 * 2**20,
    "init": 2.36,
}

READY_TIMEOUT = 120.0
RAY_LINE = "RAY-FIGURES "


@dataclass
class Figures:
    provision_call: list[float] = field(default_factory=list)
    provision_ready: list[float] = field(default_factory=list)
    burst_n: int = 0
    burst_wall: float = float("nan")
    burst_each: list[float] = field(default_factory=list)
    burst_started: float = float("nan")  # until the last provision() returned
    pause: list[float] = field(default_factory=list)
    resume_ready: list[float] = field(default_factory=list)
    idle_uss: list[int] = field(default_factory=list)
    idle_rss: list[int] = field(default_factory=list)
    terminate: list[float] = field(default_factory=list)
    scale_busy: float = float("nan")  # until maxAgents agents were busy at once
    scale_drained: float = float("nan")  # until every task ended
    scale_agents: int = 0  # agents the role's queue started
    scale_most: int = 0  # the most agents of the role seen at once
    scale_completed: int = 0
    phases: list[str] = field(default_factory=list)  # the breakdown of provision → ready


CLOCK = Phases()


async def _provision(p: Platform, org: Organization, name: str) -> tuple[str, float, float]:
    """Provision one agent; (id, seconds until provision returned, seconds until ready)."""
    t0 = time.perf_counter()
    agent = await p.controller.provision(org, name=name, role="worker", request=ContainerRequest())
    t1 = time.perf_counter()
    await p.controller.wait_running(agent.id, timeout=READY_TIMEOUT)
    return agent.id, t1 - t0, time.perf_counter() - t0


async def _terminate_all(p: Platform, org: Organization, ids: list[str]) -> list[float]:
    async def one(agent_id: str) -> float:
        t0 = time.perf_counter()
        await p.controller.terminate(org, agent_id, delete_workspace=True)
        return time.perf_counter() - t0

    return list(await asyncio.gather(*(one(i) for i in ids)))


async def measure_corral(args: argparse.Namespace, sandbox: str) -> Figures:
    f = Figures()
    async with c.live_platform(sandbox=sandbox) as p:
        org = await c.bench_org(p)
        runtime = p.runtime
        assert isinstance(runtime, LocalProcessRuntime)
        print(f"local runtime limits: {runtime.mechanism}", flush=True)
        print(f"sandbox: {runtime.sandbox.level()}", flush=True)

        ids: list[str] = []
        CLOCK.reset()
        for i in range(args.sequential):
            with CLOCK.agent(f"seq-{i}"):
                agent_id, call, ready = await _provision(p, org, f"seq-{i}")
            ids.append(agent_id)
            f.provision_call.append(call)
            f.provision_ready.append(ready)
        print(f"  {args.sequential} sequential provisions done", flush=True)
        f.phases = CLOCK.lines(f"sandbox {'on' if sandbox == 'auto' else 'off'}")
        server = runtime.zygote_pid(org.slug)
        print(f"  fork server: {f'pid {server}' if server else 'none, agents exec'}", flush=True)

        await asyncio.sleep(2.0)  # let start-up garbage settle: idle means idle
        for agent_id in ids:
            usage = await runtime.usage(org.slug, agent_id)
            if usage is not None:
                f.idle_rss.append(usage.rss_bytes)
                if usage.uss_bytes is not None:
                    f.idle_uss.append(usage.uss_bytes)

        for agent_id in ids[: args.cycles]:
            t0 = time.perf_counter()
            await p.controller.pause(org, agent_id)
            f.pause.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await p.controller.resume(org, agent_id)
            await p.controller.wait_running(agent_id, timeout=READY_TIMEOUT)
            f.resume_ready.append(time.perf_counter() - t0)
        print(f"  {len(f.pause)} pause/resume cycles done", flush=True)

        f.terminate = await _terminate_all(p, org, ids)

        if args.burst:
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(_provision(p, org, f"burst-{i}") for i in range(args.burst))
            )
            f.burst_wall = time.perf_counter() - t0
            f.burst_n = len(results)
            f.burst_each = [r[2] for r in results]
            f.burst_started = max(r[1] for r in results)
            print(f"  burst of {args.burst} done", flush=True)
            f.terminate += await _terminate_all(p, org, [r[0] for r in results])
    if args.scale_tasks:
        await measure_scale_up(args, sandbox, f)
    return f


async def measure_scale_up(args: argparse.Namespace, sandbox: str, f: Figures) -> None:
    """``--scale-tasks`` tasks at once for a declared role with no agent and ``maxAgents``
    ``--scale-max``: until all of its agents are busy, and until the queue is drained."""
    async with c.live_platform(sandbox=sandbox, auto_provision=True) as p:
        org = await c.bench_org(p, "scale")
        role = role_from_wire(
            {"name": "scale", "maxAgents": args.scale_max}, limit_range=org.plan.limit_range
        )
        await p.roles.apply(org, [role], actor="bench")
        book = p.dispatcher.book
        t0 = time.perf_counter()
        ids = []
        for _ in range(args.scale_tasks):
            rec = await p.dispatcher.submit(
                org,
                role="scale",
                agent=None,
                priority=Priority.NORMAL,
                deadline=None,
                requirements=NO_REQUIREMENTS,
                payload={"op": "sleep", "seconds": args.scale_sleep},
            )
            ids.append(rec.id)
        deadline = t0 + READY_TIMEOUT * 5
        while time.perf_counter() < deadline:
            busy = sum(1 for tasks in book.inflight.values() if tasks)
            if busy >= args.scale_max and f.scale_busy != f.scale_busy:
                f.scale_busy = time.perf_counter() - t0
            f.scale_most = max(f.scale_most, len(await p.agents.find(org_id=org.id)))
            if not any(i in book.live for i in ids):
                f.scale_drained = time.perf_counter() - t0
                break
            await asyncio.sleep(0.02)
        agents = await p.agents.find(org_id=org.id)
        f.scale_agents = len(agents)
        f.scale_most = max(f.scale_most, len(agents))
        tasks = [await p.tasks.get(i) for i in ids]
        f.scale_completed = sum(1 for t in tasks if t.state is TaskState.COMPLETED)
        print(f"  scale-up of {args.scale_tasks} tasks done", flush=True)


@dataclass
class RayFigures:
    init: float = float("nan")
    create: list[float] = field(default_factory=list)
    burst_n: int = 0
    burst_wall: float = float("nan")
    uss: list[int] = field(default_factory=list)


RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # nothing leaves this machine
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # its processes listen on 127.0.0.1 only
}


def ray_peer(args: argparse.Namespace) -> None:
    """In a process of its own (Ray's own messages stay out of the report): Ray actors
    created one at a time until their first ping answers, then ``--burst`` at once; prints
    the figures as one JSON line."""
    import psutil
    import ray

    @ray.remote
    class Pinger:
        def ping(self) -> int:
            return os.getpid()

    r = RayFigures()
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    r.init = time.perf_counter() - t0
    try:
        for _ in range(args.ray_sequential):
            t0 = time.perf_counter()
            actor = Pinger.remote()  # type: ignore[attr-defined]
            ray.get(actor.ping.remote(), timeout=READY_TIMEOUT)
            r.create.append(time.perf_counter() - t0)
            ray.kill(actor)
        print(f"  ray: {args.ray_sequential} sequential actors done", flush=True)
        if args.burst:
            t0 = time.perf_counter()
            actors = [Pinger.remote() for _ in range(args.burst)]  # type: ignore[attr-defined]
            pids = ray.get([a.ping.remote() for a in actors], timeout=READY_TIMEOUT * 3)
            r.burst_wall = time.perf_counter() - t0
            r.burst_n = len(actors)
            time.sleep(2.0)
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    r.uss.append(psutil.Process(pid).memory_full_info().uss)
            for a in actors:
                ray.kill(a)
            print(f"  ray: burst of {args.burst} done", flush=True)
    finally:
        ray.shutdown()
    print(RAY_LINE + json.dumps(dataclasses.asdict(r)), flush=True)


def measure_ray(args: argparse.Namespace) -> RayFigures | None:
    cmd = [sys.executable, __file__, "--ray-peer", "--burst", str(args.burst)]
    cmd += ["--ray-sequential", str(args.ray_sequential)]
    figures: RayFigures | None = None
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **RAY_ENV},
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(RAY_LINE):
                figures = RayFigures(**json.loads(line[len(RAY_LINE) :]))
            elif line.startswith("  ray:"):
                print(line, end="", flush=True)
        proc.wait()
        if figures is None:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-1500:]
            print(f"ray: the peer run failed (exit {proc.returncode}); skipped\n{tail}")
    return figures


def report(args: argparse.Namespace, f: Figures, r: RayFigures | None, sandbox: str) -> None:
    t = c.Table(
        f"agent lifecycle (local runtime, through the controller; sandbox {sandbox})", "ray"
    )
    p50 = c.pct(f.provision_ready, 50)
    t.add(
        f"provision → ready p50 (n={len(f.provision_ready)})",
        c.ms(p50),
        f"≤ {c.ms(TARGET_PROVISION_P50)} ({c.met(p50, TARGET_PROVISION_P50)})",
        measured=c.ms(c.pct(r.create, 50)) if r and r.create else "",
        notes=c.ms(RAY_NOTES["create p50"]),
    )
    t.add(
        "provision → ready p99",
        c.ms(c.pct(f.provision_ready, 99)),
        measured=c.ms(c.pct(r.create, 99)) if r and r.create else "",
        notes=c.ms(RAY_NOTES["create p99"]),
    )
    t.add("  of which provision() returns p50", c.ms(c.pct(f.provision_call, 50)))
    if f.burst_n:
        t.add(
            f"{f.burst_n} at once, until all ready",
            c.secs(f.burst_wall),
            f"≤ {c.secs(TARGET_BURST_100)} ({c.met(f.burst_wall, TARGET_BURST_100)})",
            measured=c.secs(r.burst_wall) if r and r.burst_n else "",
            notes=c.secs(RAY_NOTES["burst 100"]),
        )
        t.add(f"  each of the {f.burst_n}: ready p50", c.secs(c.pct(f.burst_each, 50)))
        t.add("  until the last provision() returned", c.secs(f.burst_started))
    if f.pause:
        pause50 = c.pct(f.pause, 50)
        t.add(
            f"pause p50 (n={len(f.pause)})",
            c.ms(pause50),
            f"≤ {c.ms(TARGET_PAUSE_P50)} ({c.met(pause50, TARGET_PAUSE_P50)})",
        )
        t.add("pause max", c.ms(max(f.pause)))
        resume50 = c.pct(f.resume_ready, 50)
        t.add(
            f"resume → ready p50 (n={len(f.resume_ready)})",
            c.ms(resume50),
            f"≤ {c.ms(TARGET_RESUME_P50)} ({c.met(resume50, TARGET_RESUME_P50)})",
        )
    if f.idle_uss:
        uss50 = statistics.median(f.idle_uss)
        t.add(
            f"idle agent USS p50 (n={len(f.idle_uss)})",
            c.mib(uss50),
            f"≤ {TARGET_IDLE_MIB:.0f} MiB ({c.met(uss50 / 2**20, TARGET_IDLE_MIB)})",
            measured=c.mib(statistics.median(r.uss)) if r and r.uss else "",
            notes=c.mib(RAY_NOTES["uss"]),
        )
        t.add("  idle agent USS max / RSS p50", f"{c.mib(max(f.idle_uss))} / "
              f"{c.mib(statistics.median(f.idle_rss))}")  # fmt: skip
    if f.terminate:
        t.add(f"terminate p50 (n={len(f.terminate)}, concurrent)", c.ms(c.pct(f.terminate, 50)))
    if f.scale_agents:
        t.add(
            f"scale-up: {args.scale_tasks} tasks, empty role (maxAgents {args.scale_max}): "
            "all agents busy",
            c.secs(f.scale_busy),
        )
        t.add(
            f"  until the queue drained ({f.scale_completed}/{args.scale_tasks} completed, "
            f"{args.scale_sleep:g} s each)",
            c.secs(f.scale_drained),
        )
        t.add(
            "  agents the queue started / most at once",
            f"{f.scale_agents} / {f.scale_most}",
            f"= {args.scale_max} ({c.met(abs(f.scale_agents - args.scale_max), 0)})",
        )
    if r is not None:
        t.add(
            "runtime start (ray.init)", "", measured=c.secs(r.init), notes=c.secs(RAY_NOTES["init"])
        )
    t.print()
    if f.phases:
        print("\n".join(["", *f.phases]))


def exec_every_agent() -> None:
    """``--no-zygote``: the platform's local runtime forks and execs every agent."""
    import corral.runtime.local as local

    class ExecOnly(LocalProcessRuntime):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs, zygote=False)

    local.LocalProcessRuntime = ExecOnly  # type: ignore[misc]  # the platform imports it late


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequential", type=int, default=30, help="agents provisioned one by one")
    ap.add_argument("--burst", type=int, default=100, help="agents provisioned at once (0: skip)")
    ap.add_argument("--cycles", type=int, default=10, help="pause/resume cycles")
    ap.add_argument("--ray-sequential", type=int, default=20, help="Ray actors one by one")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray peer")
    ap.add_argument("--no-zygote", action="store_true", help="exec every agent (no fork server)")
    ap.add_argument(
        "--sandbox",
        choices=["both", "on", "off"],
        default="both",
        help="measure with the sandbox on (its default, strict where the kernel allows), off, "
        "or both in this run (the default: on first, then off, side by side)",
    )
    ap.add_argument("--scale-tasks", type=int, default=200, help="scale-up tasks (0: skip)")
    ap.add_argument("--scale-max", type=int, default=20, help="the scale-up role's maxAgents")
    ap.add_argument("--scale-sleep", type=float, default=0.5, help="seconds each task sleeps")
    ap.add_argument("--limit", type=float, default=600.0, help="give up after this many seconds")
    ap.add_argument("--ray-peer", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ray_peer:
        ray_peer(args)
        return
    args.cycles = min(args.cycles, args.sequential)
    if args.no_zygote:
        exec_every_agent()

    c.header("agents")
    CLOCK.install()
    before = {p.pid for p in c.children()}
    modes = {"both": ["auto", "off"], "on": ["auto"], "off": ["off"]}[args.sandbox]
    runs = {}
    for mode in modes:
        print(f"-- sandbox {'on' if mode == 'auto' else 'off'}", flush=True)
        runs[mode] = c.bounded(measure_corral(args, mode), args.limit, before)

    ray_figures: RayFigures | None = None
    if args.no_ray:
        print("ray: skipped (--no-ray); its figures below are from the notes")
    elif not c.importable("ray"):
        print("ray: not importable here, skipped; its figures below are from the notes "
              "(pip install ray to measure it side by side)")  # fmt: skip
    else:
        with c.watchdog(args.limit, before):
            ray_figures = measure_ray(args)

    for mode, figures in runs.items():
        report(args, figures, ray_figures, "on" if mode == "auto" else "off")
    c.report_leftovers(before)


if __name__ == "__main__":
    main()
