"""A long run: does the platform stay as fast, and as small, after hundreds of thousands of
tasks as at the start?

Tiny tasks (``{"op": "echo"}``) go through the embedded default (SQLite, the platform's own
nats-server, two local agent processes with many slots) with a steady window of tasks in
flight, until ``--tasks`` (default 500,000) have completed. Finished tasks are pruned after
``--retention`` seconds (the plans' retention, shortened for the run). Every ``--every``
seconds it prints: tasks completed per second in that window, rows in the task and history
tables, bytes JetStream holds on disk (every stream: the inboxes and the agents' events), and
the resident memory of the control plane and of nats-server.

It passes when the throughput of the last window is within 10 % of the first full one, and the
tables, the streams and both processes' memory end no bigger than a bound set by the first
windows (bounded, not growing with the tasks run).

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


def _disk(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


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
        last_done, last_at = 0, time.perf_counter()
        print(
            f"{'t':>6} {'done':>9} {'tasks/s':>8} {'task rows':>10} {'history':>9} "
            f"{'streams':>10} {'cp rss':>9} {'nats rss':>9}",
            flush=True,
        )
        t0 = last_at
        try:
            while done < args.tasks:
                await asyncio.sleep(args.every)
                now = time.perf_counter()
                tasks, history = await _rows(p)
                sample = Sample(
                    at=now - t0,
                    completed=done,
                    rate=(done - last_done) / (now - last_at),
                    tasks=tasks,
                    history=history,
                    stream_bytes=await asyncio.to_thread(_disk, jetstream),
                    control_rss=me.memory_info().rss,
                    nats_rss=nats.memory_info().rss if nats is not None else 0,
                )
                samples.append(sample)
                last_done, last_at = done, now
                print(
                    f"{sample.at:6.0f} {sample.completed:9,} {sample.rate:8,.0f} "
                    f"{sample.tasks:10,} {sample.history:9,} {c.mib(sample.stream_bytes):>10} "
                    f"{c.mib(sample.control_rss):>9} {c.mib(sample.nats_rss):>9}",
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


def judge(samples: list[Sample], args: argparse.Namespace) -> bool:
    full = [s for s in samples if s.rate > 0]
    if len(full) < 4:
        print("too few windows to judge; run longer")
        return False
    # the start is the first window once pruning runs (finished tasks older than the retention
    # are deleted from then on, a steady cost the first windows do not pay); skip the drain
    steady = [x for x in full if x.at > args.retention + args.every] or full[1:]
    start, end = steady[0], full[-2]
    print(f"(before pruning began: {full[1].rate:,.0f}/s)")
    warm = full[: max(3, len(full) // 5)]
    bound = {
        "task rows": max(s.tasks for s in warm) * 1.5 + 10_000,
        "history rows": max(s.history for s in warm) * 1.5 + 40_000,
        "streams": max(s.stream_bytes for s in warm) * 1.5 + 64 * 2**20,
        "control-plane RSS": max(s.control_rss for s in warm) * 1.25 + 64 * 2**20,
        "nats-server RSS": max(s.nats_rss for s in warm) * 1.25 + 64 * 2**20,
    }
    last = samples[-1]
    ends = {
        "task rows": last.tasks,
        "history rows": last.history,
        "streams": last.stream_bytes,
        "control-plane RSS": last.control_rss,
        "nats-server RSS": last.nats_rss,
    }
    ok = True
    drop = 1 - end.rate / start.rate if start.rate else 1.0
    verdict = "ok" if drop <= 0.10 else "SLOWER"
    ok &= drop <= 0.10
    print(f"throughput: {start.rate:,.0f}/s early, {end.rate:,.0f}/s late ({-drop:+.0%}) {verdict}")
    for name, value in ends.items():
        fine = value <= bound[name]
        ok &= fine
        print(
            f"{name}: {value:,.0f} at the end, bound {bound[name]:,.0f} {'ok' if fine else 'GREW'}"
        )
    done = last.completed
    print(f"completed {done:,} of {args.tasks:,}")
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
