"""A long run: does the platform stay as fast, and as small, after hundreds of thousands of
tasks as at the start?

Tiny tasks (``{"op": "echo"}``) go through the embedded default (SQLite, the platform's own
nats-server, two local agent processes with many slots) with a steady window of tasks in
flight, until ``--tasks`` (default 500,000) have completed. Finished tasks are pruned after
``--retention`` seconds (the plans' retention, shortened for the run). Every ``--every``
seconds it prints: tasks completed per second in that window, rows in the task and history
tables, bytes JetStream holds on disk (every stream: the inboxes and the agents' events), and
the resident memory of the control plane and of nats-server.

It passes when, in the steady state (once pruning runs and the inbox's duplicate window is
full), the last quarter of the windows runs within 10 % of the first quarter in throughput and in CPU
seconds per task (summed over every platform process: the figure that does not depend on what
else the machine runs), the tables and streams end bounded by the first steady windows, and
both processes' memory is flat: at the end no more than 5 % (+2 MiB) above the middle of the
run, and 25 % above the first steady windows (warm-up).

Run: ``python benchmarks/soak.py [--tasks 500000] [--inflight 4000] [--every 10]``
(``--tasks 50000`` for a quick run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import _common as c
import psutil
from sqlalchemy import func, select

from corral.bus.streams import DUPLICATE_WINDOW
from corral.control.platform import Platform
from corral.domain.admission import ContainerRequest
from corral.domain.tasks import Priority, Requirements
from corral.store.schema import TaskEventRow, TaskRow

AGENTS = 2
SLOTS = 256
PAYLOAD = {"op": "echo"}


@dataclass
class Sample:
    at: float
    completed: int
    rate: float
    tasks: int
    history: int
    stream_bytes: int
    control_rss: int
    nats_rss: int
    #: CPU seconds the platform's processes (control plane, nats-server, fork servers, agents)
    #: spent per 1,000 tasks in the window: the cost of a task, whatever else the machine runs
    cpu_per_k: float


def _disk(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


class CpuMeter:
    """CPU seconds of this process and every process below it, exited ones included."""

    def __init__(self) -> None:
        self._seen: dict[int, float] = {}

    def total(self) -> float:
        procs = [psutil.Process(), *c.children()]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                self._seen[proc.pid] = t.user + t.system
        return sum(self._seen.values())


async def _rows(p: Platform) -> tuple[int, int]:
    async with p.db.sessions() as s:
        tasks = (await s.execute(select(func.count()).select_from(TaskRow))).scalar_one()
        history = (await s.execute(select(func.count()).select_from(TaskEventRow))).scalar_one()
    return int(tasks), int(history)


async def run(args: argparse.Namespace) -> list[Sample]:
    async with c.live_platform(task_retention=args.retention, prune_interval=2.0) as p:
        org = await c.bench_org(p)
        for i in range(AGENTS):
            agent = await p.controller.provision(
                org, name=f"soak-{i}", role="worker", request=ContainerRequest(), slots=SLOTS
            )
            await p.controller.wait_running(agent.id, timeout=60)
        jetstream = p.data_dir / "nats"
        nats = psutil.Process(p.nats.pid) if p.nats is not None and p.nats.pid else None
        me = psutil.Process()
        done = 0
        submitted = 0
        room = asyncio.Semaphore(args.inflight)

        async def count_completions() -> None:
            nonlocal done
            async with p.hub.subscribe(None) as events:
                while True:
                    ev = await events.get()
                    task = ev.get("task") if isinstance(ev, dict) else None
                    if task and task.get("state") == "completed":
                        done += 1
                        room.release()

        async def feed() -> None:
            nonlocal submitted
            while submitted < args.tasks:
                await room.acquire()
                await p.dispatcher.submit(
                    org,
                    role="worker",
                    agent=None,
                    priority=Priority.NORMAL,
                    deadline=None,
                    requirements=Requirements(),
                    payload=PAYLOAD,
                )
                submitted += 1

        counter = asyncio.create_task(count_completions(), name="soak-count")
        feeders = [asyncio.create_task(feed(), name="soak-feed") for _ in range(4)]
        samples: list[Sample] = []
        meter = CpuMeter()
        last_cpu = meter.total()
        last_done, last_at = 0, time.perf_counter()
        print(
            f"{'t':>6} {'done':>9} {'tasks/s':>8} {'task rows':>10} {'history':>9} "
            f"{'streams':>10} {'cp rss':>9} {'nats rss':>9} {'cpu s/1k':>8}",
            flush=True,
        )
        t0 = last_at
        try:
            while done < args.tasks:
                await asyncio.sleep(args.every)
                now = time.perf_counter()
                tasks, history = await _rows(p)
                cpu = meter.total()
                sample = Sample(
                    at=now - t0,
                    completed=done,
                    rate=(done - last_done) / (now - last_at),
                    tasks=tasks,
                    history=history,
                    stream_bytes=await asyncio.to_thread(_disk, jetstream),
                    control_rss=me.memory_info().rss,
                    nats_rss=nats.memory_info().rss if nats is not None else 0,
                    cpu_per_k=(cpu - last_cpu) * 1000 / max(1, done - last_done),
                )
                samples.append(sample)
                last_done, last_at, last_cpu = done, now, cpu
                print(
                    f"{sample.at:6.0f} {sample.completed:9,} {sample.rate:8,.0f} "
                    f"{sample.tasks:10,} {sample.history:9,} {c.mib(sample.stream_bytes):>10} "
                    f"{c.mib(sample.control_rss):>9} {c.mib(sample.nats_rss):>9} "
                    f"{sample.cpu_per_k:8.2f}",
                    flush=True,
                )
                if now - t0 > args.budget:
                    print(f"budget of {args.budget:.0f} s spent", flush=True)
                    break
        finally:
            for task in (counter, *feeders):
                task.cancel()
            await asyncio.gather(counter, *feeders, return_exceptions=True)
    return samples


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def judge(samples: list[Sample], args: argparse.Namespace) -> bool:
    full = [s for s in samples if s.rate > 0][:-1]  # the last window is the drain
    # Steady state begins once pruning runs (finished tasks older than the retention are
    # deleted from then on) and the inbox's duplicate window (DUPLICATE_WINDOW: message ids
    # nats-server keeps to store a redelivery once) is full: a bounded cost the first windows
    # do not pay yet. "Early" and "late" are three windows each, to smooth out the noise.
    settle = max(args.retention, DUPLICATE_WINDOW) + args.every
    steady = [x for x in full if x.at > settle]
    if len(steady) < 6:
        print(f"too few steady windows to judge ({len(steady)}); run longer")
        return False
    n = max(3, len(steady) // 4)
    early, middle, late = steady[:n], steady[len(steady) // 2 - n // 2 :][:n], steady[-n:]
    print(f"(before the steady state: {_mean([x.rate for x in full[:3]]):,.0f}/s)")
    ok = True
    start, end = _mean([x.rate for x in early]), _mean([x.rate for x in late])
    drop = 1 - end / start if start else 1.0
    ok &= drop <= 0.10
    print(
        f"throughput: {start:,.0f}/s early, {end:,.0f}/s late ({-drop:+.0%}) "
        f"{'ok' if drop <= 0.10 else 'SLOWER'}"
    )
    cost0, cost1 = _mean([x.cpu_per_k for x in early]), _mean([x.cpu_per_k for x in late])
    grew = cost1 / cost0 - 1 if cost0 else 1.0
    ok &= grew <= 0.10
    print(
        f"CPU per 1,000 tasks (every platform process): {cost0:.2f} s early, {cost1:.2f} s late "
        f"({grew:+.0%}) {'ok' if grew <= 0.10 else 'COSTLIER'}"
    )

    # Tables and streams: bounded by what the first steady windows hold. Memory: flat. A
    # process still warms up in the steady state (nats-server's code pages and Go's idle heap
    # settle over minutes, its live heap stays ~6 MiB) so the end may be at most 25 % above the
    # first steady windows, and -- what a leak would break -- at most 5 % (+2 MiB) above the
    # middle of the run: the second half of the tasks may not cost memory.
    def rss(kind: str, windows: list[Sample]) -> int:
        return int(max(getattr(s, kind) for s in windows))

    bound = {
        "task rows": max(s.tasks for s in early) * 1.5 + 10_000,
        "history rows": max(s.history for s in early) * 1.5 + 40_000,
        "streams": max(s.stream_bytes for s in early) * 1.5 + 16 * 2**20,
        **{
            name: min(rss(kind, early) * 1.25, rss(kind, middle) * 1.05 + 2 * 2**20)
            for name, kind in (
                ("control-plane RSS", "control_rss"),
                ("nats-server RSS", "nats_rss"),
            )
        },
    }
    last = samples[-1]
    ends = {
        "task rows": last.tasks,
        "history rows": last.history,
        "streams": last.stream_bytes,
        "control-plane RSS": last.control_rss,
        "nats-server RSS": last.nats_rss,
    }
    for name, value in ends.items():
        fine = value <= bound[name]
        ok &= fine
        print(
            f"{name}: {value:,.0f} at the end, bound {bound[name]:,.0f} {'ok' if fine else 'GREW'}"
        )
    done = last.completed
    print(f"completed {done:,} of {args.tasks:,}; load average at the end {os.getloadavg()}")
    return ok and done >= args.tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=500_000)
    ap.add_argument("--inflight", type=int, default=4000)
    ap.add_argument("--every", type=float, default=10.0)
    ap.add_argument("--retention", type=float, default=30.0)
    ap.add_argument("--budget", type=float, default=1800.0)
    args = ap.parse_args()
    c.header("soak: tasks through the embedded default for a long run")
    before = {p.pid for p in c.children()}
    samples = c.bounded(run(args), args.budget + 120, before)
    ok = judge(samples, args)
    c.report_leftovers(before)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
