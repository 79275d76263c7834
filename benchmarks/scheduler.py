"""Scheduler benchmark: a million queued tasks across a thousand orgs.

Orgs cycle through the plans free / standard / enterprise (fair-share weights 1 / 2 / 4, plan
boosts 0 / 1 / 2); each task draws a priority (critical 2 %, high 20 %, normal 48 %, low 30 %)
and one in five a deadline. All tasks are queued, then the scheduler decides until the queue
is empty. The platform has SLOTS running slots: each decision starts a task and, once all
slots are busy, the oldest running task finishes (every task runs for SLOTS decisions), so
demand always exceeds capacity. Simulated time advances 1 ms per decision and expired tasks
are collected every 1,000 decisions.

Fair share is measured where it is the deciding rule: in each band's run of tasks without a
deadline, from SLOTS decisions after the run starts (the running work left over from the band
before has turned over by then) until the first competing org runs out of tasks of that band.
Each org's decisions there are compared with its weight's share of the competing weights.

The peer is the naive single heapq queue (the seed's design) ordering the same tasks by band,
deadline and arrival, with the same simulation; a second, small scenario shows what each does
when some orgs are full.

Run: ``python benchmarks/scheduler.py [--tasks N] [--orgs N]``.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import math
import os
import random
import resource
import sys
import time
from array import array
from collections import deque
from collections.abc import Sequence

from corral.domain.ids import OrgId, TaskId
from corral.domain.tasks import Priority, effective_priority
from corral.scheduling import PROVISION, Placement, QueuedTask, Scheduler, wait

PLANS = (("free", 1, 0), ("standard", 2, 1), ("enterprise", 4, 2))  # name, weight, boost
PRIORITIES = (Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW)
PRIORITY_WEIGHTS = (2, 20, 48, 30)
DEADLINE_SHARE = 0.2
SLOTS = 40_000
TICK = 0.001  # simulated seconds per decision
AGING_SECONDS = 300.0


def provision(task: QueuedTask) -> Placement:
    """Placement for the benchmark: every task gets a new agent (capacity is the slots)."""
    return PROVISION


class Workload:
    """The tasks, and per org its weight and per priority its band."""

    def __init__(self, n_tasks: int, n_orgs: int, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.orgs = [OrgId(f"org_{i:010x}") for i in range(n_orgs)]
        self.index = {org: i for i, org in enumerate(self.orgs)}
        self.plan = [PLANS[i % len(PLANS)] for i in range(n_orgs)]
        self.weight = [p[1] for p in self.plan]
        self.band = [{pr: effective_priority(pr, p[2]) for pr in Priority} for p in self.plan]
        priorities = rng.choices(PRIORITIES, PRIORITY_WEIGHTS, k=n_tasks)
        owners = [rng.randrange(n_orgs) for _ in range(n_tasks)]
        now = 0.0
        self.tasks = [
            QueuedTask(
                TaskId(f"task_{i:016x}"),
                self.orgs[owners[i]],
                priorities[i],
                now,
                rng.uniform(60.0, 1800.0) if rng.random() < DEADLINE_SHARE else None,
            )
            for i in range(n_tasks)
        ]


class Run:
    """What one queue did: its decisions, latencies and timings."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.taken: list[QueuedTask] = []
        self.orgs = array("i")  # org index of each decision
        self.classes = array("i")  # band * 2 + has-deadline of each decision
        self.latency_ns = array("q")
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.expired = 0

    def index(self, work: Workload) -> None:
        """Turn the decisions into org indexes and classes, outside the timed loop."""
        for task in self.taken:
            i = work.index[task.org]
            self.orgs.append(i)
            self.classes.append(work.band[i][task.priority] * 2 + (task.deadline is not None))
        self.taken = []

    @property
    def decisions(self) -> int:
        return len(self.orgs)

    def p(self, q: float) -> float:
        ordered = sorted(self.latency_ns)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6 if ordered else 0.0


def run_scheduler(work: Workload) -> Run:
    run = Run("scheduler")
    sched = Scheduler(aging_seconds=AGING_SECONDS)
    for org, (_, weight, boost) in zip(work.orgs, work.plan, strict=True):
        sched.set_org(org, weight=weight, plan_boost=boost)
    for task in work.tasks:
        sched.enqueue(task)
    gc.collect()
    placer = provision
    running: deque[OrgId] = deque()
    log, lat = run.taken.append, run.latency_ns.append
    pop_next, on_finished, clock = sched.pop_next, sched.on_finished, time.perf_counter_ns
    now, n = 0.0, 0
    started, cpu = time.perf_counter(), time.process_time()
    while True:
        t0 = clock()
        decision = pop_next(now, placer)
        if decision is None:
            break
        task = decision.task
        running.append(task.org)
        if len(running) > SLOTS:
            on_finished(running.popleft())  # the oldest running task finished
        lat(clock() - t0)
        log(task)
        n += 1
        now += TICK
        if n % 1000 == 0:
            run.expired += len(sched.expire(now))
    run.seconds = time.perf_counter() - started
    run.cpu_seconds = time.process_time() - cpu
    run.expired += len(sched.expire(math.inf))
    run.index(work)
    return run


def run_naive(work: Workload) -> Run:
    """One heapq over all tasks, keyed like the scheduler but blind to tenants."""
    run = Run("naive heapq")
    heap: list[tuple[int, float, int, QueuedTask]] = []
    for seq, task in enumerate(work.tasks):
        b = work.band[work.index[task.org]][task.priority]
        key = -b - (1 << 62 if task.priority is Priority.CRITICAL else 0)
        heap.append((key, math.inf if task.deadline is None else task.deadline, seq, task))
    heapq.heapify(heap)
    gc.collect()
    running: deque[OrgId] = deque()
    log, lat = run.taken.append, run.latency_ns.append
    pop, clock, placer = heapq.heappop, time.perf_counter_ns, provision
    now = 0.0
    started, cpu = time.perf_counter(), time.process_time()
    while heap:
        t0 = clock()
        _, deadline, _, task = pop(heap)
        if deadline <= now:
            run.expired += 1
            continue
        if placer(task) is PROVISION:  # the seed's loop would break on no capacity
            running.append(task.org)
            if len(running) > SLOTS:
                running.popleft()
        lat(clock() - t0)
        log(task)
        now += TICK
    run.seconds = time.perf_counter() - started
    run.cpu_seconds = time.process_time() - cpu
    run.index(work)
    return run


def fair_share(work: Workload, run: Run) -> list[float]:
    """Per org measured, achieved / fair decisions - 1 over the contended windows."""
    n_orgs = len(work.orgs)
    remaining: dict[int, list[int]] = {}
    for task in work.tasks:
        if task.deadline is None:
            i = work.index[task.org]
            b = work.band[i][task.priority]
            remaining.setdefault(b, [0] * n_orgs)[i] += 1
    achieved = [0.0] * n_orgs
    fair = [0.0] * n_orgs
    orgs, classes, total = run.orgs, run.classes, run.decisions
    start = 0
    while start < total:
        cls = classes[start]
        end = start
        while end < total and classes[end] == cls:
            end += 1
        if cls % 2 == 0:
            left = remaining[cls // 2]
            competing = [i for i in range(n_orgs) if left[i] > 0]
            stop = end
            for k in range(start, end):
                left[orgs[k]] -= 1
                if left[orgs[k]] == 0 and stop == end:
                    stop = k  # contention ends when the first competitor runs dry
            first = start + SLOTS // 4
            length = (stop - first) // SLOTS * SLOTS  # whole turnovers of the running slots
            stop = first + length
            if competing and length > 0:
                weights = sum(work.weight[i] for i in competing)
                for i in competing:
                    fair[i] += length * work.weight[i] / weights
                for k in range(first, stop):
                    achieved[orgs[k]] += 1
        start = end
    return [achieved[i] / fair[i] - 1.0 for i in range(n_orgs) if fair[i] > 0]


def head_of_line(n_orgs: int, per_org: int) -> tuple[int, int, int]:
    """Tasks placeable, and placed by each queue, when every tenth org is full (its placement
    says wait) and a full org's task is first in line."""
    orgs = [OrgId(f"org_{i:04d}") for i in range(n_orgs)]
    tasks = [
        QueuedTask(TaskId(f"t{i}-{j}"), orgs[i], Priority.NORMAL, 0.0)
        for j in range(per_org)
        for i in range(n_orgs)
    ]
    full = {org for k, org in enumerate(orgs) if k % 10 == 0}
    refused = wait("full")

    def placer(task: QueuedTask) -> Placement:
        return refused if task.org in full else PROVISION

    sched = Scheduler()
    for org in orgs:
        sched.set_org(org, weight=1, plan_boost=0)
    for task in tasks:
        sched.enqueue(task)
    ours = 0
    while sched.pop_next(0.0, placer) is not None:
        ours += 1
    heap = [(0, seq, task) for seq, task in enumerate(tasks)]
    naive = 0
    while heap and placer(heap[0][2]) is not refused:  # the seed's loop: break when full
        heapq.heappop(heap)
        naive += 1
    return (n_orgs - len(full)) * per_org, ours, naive


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(devs: Sequence[float]) -> str:
    if not devs:
        return "no contended window long enough to measure"
    within = sum(1 for d in devs if abs(d) <= 0.05)
    worst = max(devs, key=abs)
    mean = sum(abs(d) for d in devs) / len(devs)
    return (
        f"max deviation {worst:+.1%}, mean |deviation| {mean:.1%}, "
        f"{within}/{len(devs)} orgs within ±5 %"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--orgs", type=int, default=1_000)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(
        f"workload: {args.tasks:,} tasks, {args.orgs:,} orgs, {SLOTS:,} running slots; "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    work = Workload(args.tasks, args.orgs)
    print(f"  built in {time.perf_counter() - started:.1f} s")

    ours = run_scheduler(work)
    ours_rss = peak_rss_mib()
    ours_devs = fair_share(work, ours)
    gc.collect()
    naive = run_naive(work)
    naive_devs = fair_share(work, naive)
    placeable, hol_ours, hol_naive = head_of_line(200, 50)

    for r, devs in ((ours, ours_devs), (naive, naive_devs)):
        print(f"{r.name}:")
        print(f"  decisions        {r.decisions:,} ({r.expired:,} expired) in {r.seconds:.2f} s")
        print(
            f"  decisions/s      {r.decisions / r.seconds:,.0f} "
            f"({r.decisions / r.cpu_seconds:,.0f} per CPU second)"
        )
        print(f"  latency          p50 {r.p(0.5):.4f} ms, p99 {r.p(0.99):.4f} ms")
        print(f"  fair share       {summary(devs)}")
    print(
        f"peak RSS           {ours_rss:,.0f} MiB after the scheduler, {peak_rss_mib():,.0f} MiB at the end"
    )
    print(
        f"compared           scheduler {ours.decisions / ours.seconds:,.0f}/s vs naive "
        f"{naive.decisions / naive.seconds:,.0f}/s; p99 {ours.p(0.99):.4f} vs "
        f"{naive.p(0.99):.4f} ms; within ±5 % of fair share "
        f"{sum(abs(d) <= 0.05 for d in ours_devs)}/{len(ours_devs)} vs "
        f"{sum(abs(d) <= 0.05 for d in naive_devs)}/{len(naive_devs)} orgs"
    )
    print(
        f"head-of-line       with every tenth of 200 orgs full: scheduler placed {hol_ours:,} "
        f"of {placeable:,} placeable tasks, naive {hol_naive:,}"
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"total              {time.perf_counter() - started:.1f} s; load average {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
