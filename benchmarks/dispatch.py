"""Task dispatch end to end: ``Dispatcher.submit`` → durable queue (SQLite) → the platform's
own nats-server → two agent processes running the built-in no-op (``{"op": "echo"}``) →
their events back → ``completed`` in the store.

Two phases, the same for Corral and for the peer:

- idle: one task at a time (``--idle``, default 200). The round trip is timed by the caller,
  from just before ``submit`` until the ``completed`` event reaches a subscriber of the
  platform's event hub; the store's own timestamps (queued → completed) are shown too.
- full load: ``--tasks`` (default 20,000) submitted at once, until all are completed or
  ``--budget`` seconds have passed. Throughput is completed tasks over the time from the
  first submit to the last completion; latency is each task's queued → completed, from the
  store's timestamps (tasks still unfinished at the budget count as slower than it).

The peer is Celery with Redis (2 prefork workers, a no-op task, the same counts): measured in
this run where ``celery`` and ``redis`` are importable and a Redis answers on
127.0.0.1:6379, and always printed with the figures from the notes. Its latency is the
client's submit time to the worker's completion time.

With ``--traced`` every task is submitted inside a span, so it carries a trace context and
gets a dispatch span (the spans are counted, not sent): the cost of tracing when it is on.

Run: ``python benchmarks/dispatch.py [--tasks 20000] [--idle 200] [--budget 90] [--no-celery]``
(``--tasks 2000`` for a quick run). Loopback only; a temporary data directory; nothing is
left running and the peer's Redis keys are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import _common as c
from sqlalchemy import func, select

from corral.control.platform import Platform
from corral.domain.admission import ContainerRequest
from corral.domain.tasks import Priority, Requirements
from corral.domain.tenancy import Organization
from corral.store.schema import TaskEventRow, TaskRow

TARGET_RATE = 5000.0
TARGET_IDLE_P50 = 0.002
CELERY_NOTES = {"rate": 903.0, "idle p50": 0.00154, "idle p99": 0.00279}
AGENTS = 2
WARMUP = 20
PAYLOAD = {"op": "echo"}


@dataclass
class Phase:
    """What one phase measured (seconds)."""

    n: int = 0  # tasks asked for
    submitted: int = 0
    completed: int = 0
    submit_seconds: float = float("nan")
    window: float = float("nan")  # first submit → last completion (or the budget's end)
    latency: list[float] = field(default_factory=list)  # inf for unfinished
    caller: list[float] = field(default_factory=list)  # round trips seen by the caller
    steps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    done_at: list[float] = field(default_factory=list)  # completion times (wall clock)
    started_at: float = float("nan")  # first submit (wall clock)
    all_in_at: float = float("nan")  # last submit accepted (wall clock)

    @property
    def rate(self) -> float:
        return self.completed / self.window if self.window > 0 else float("nan")

    @property
    def rate_after_submits(self) -> float:
        """Completions per second once every task was accepted: the drain rate."""
        end = self.started_at + self.window
        span = end - self.all_in_at
        if math.isnan(span) or span < 1.0:
            return float("nan")
        return sum(1 for d in self.done_at if d > self.all_in_at) / span


# -- corral ------------------------------------------------------------------------------


async def _submit(p: Platform, org: Organization) -> str:
    rec = await p.dispatcher.submit(
        org,
        role="worker",
        agent=None,
        priority=Priority.NORMAL,
        deadline=None,
        requirements=Requirements(),
        payload=PAYLOAD,
    )
    return rec.id


async def _store_times(p: Platform, ids: set[str]) -> dict[str, dict[str, Any]]:
    """Per task, when it entered each state (the store's clock) and its agent."""
    q = select(TaskEventRow.task_id, TaskEventRow.to_state, TaskEventRow.at)
    agents = select(TaskRow.id, TaskRow.agent_id)
    async with p.db.sessions() as s:
        rows = (await s.execute(q)).all()
        owners: dict[str, str | None] = dict((await s.execute(agents)).all())
    times: dict[str, dict[str, Any]] = defaultdict(dict)
    for task_id, state, at in rows:
        if task_id in ids:
            times[task_id][state] = at.timestamp()
            times[task_id]["agent"] = owners.get(task_id)
    return times


def _fill_from_store(
    phase: Phase, times: dict[str, dict[str, Any]], *, one_at_a_time: bool = True
) -> tuple[float, float]:
    """Latencies and per-step durations; returns (first queued, last completed)."""
    first, last = float("inf"), float("-inf")
    per_agent: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t in times.values():
        queued, done = t.get("queued"), t.get("completed")
        if queued is None:
            continue
        first = min(first, queued)
        if done is None:
            phase.latency.append(float("inf"))
            continue
        last = max(last, done)
        phase.completed += 1
        phase.done_at.append(done)
        phase.latency.append(done - queued)
        chain = [("queued", "dispatched"), ("dispatched", "running"), ("running", "completed")]
        for a, b in chain:
            if a in t and b in t:
                phase.steps[f"{a} → {b}"].append(t[b] - t[a])
        if one_at_a_time and t.get("agent") and "dispatched" in t:
            per_agent[t["agent"]].append((t["dispatched"], done))
    for runs in per_agent.values():  # how long an agent sat idle between two tasks
        runs.sort()
        for (_, done), (nxt, _) in zip(runs, runs[1:], strict=False):
            phase.steps["completed → agent's next dispatched"].append(nxt - done)
    phase.latency += [float("inf")] * (phase.n - len(phase.latency))
    return first, last


async def _idle(p: Platform, org: Organization, n: int, *, record: bool) -> Phase:
    phase = Phase(n=n)
    ids: set[str] = set()
    async with p.hub.subscribe(None) as events:
        for _ in range(n):
            t0 = time.perf_counter()
            task_id = await _submit(p, org)
            ids.add(task_id)
            while True:
                ev = await asyncio.wait_for(events.get(), timeout=30)
                task = ev.get("task") if ev.get("kind") == "task" else None
                if task and task["id"] == task_id and task["state"] == "completed":
                    break
            phase.caller.append(time.perf_counter() - t0)
    phase.submitted = n
    if record:
        _fill_from_store(phase, await _store_times(p, ids))
    return phase


async def _completed_count(p: Platform) -> int:
    async with p.db.sessions() as s:
        q = select(func.count()).select_from(TaskRow).where(TaskRow.state == "completed")
        return int((await s.execute(q)).scalar_one())


async def _load(
    p: Platform, org: Organization, n: int, budget: float, *, submitters: int, slots: int
) -> Phase:
    phase = Phase(n=n)
    ids: list[str] = []
    baseline = await _completed_count(p)
    remaining = iter(range(n))

    stop = asyncio.Event()

    async def submitter() -> None:
        for _ in remaining:
            if stop.is_set():
                return
            ids.append(await _submit(p, org))

    wall0 = time.time()
    t0 = time.perf_counter()
    deadline = t0 + budget
    running = [asyncio.create_task(submitter(), name="bench-submit") for _ in range(submitters)]
    all_in = asyncio.gather(*running)

    def submitted(_: object) -> None:
        phase.submit_seconds = time.perf_counter() - t0
        phase.all_in_at = time.time()

    all_in.add_done_callback(submitted)
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.25)
        if await _completed_count(p) - baseline >= n:
            break
    cut = time.time()
    if not all_in.done():  # the budget is over: stop submitting, let the callers finish
        stop.set()
        phase.submit_seconds = time.perf_counter() - t0
        await all_in
        phase.all_in_at = float("nan")  # not all were accepted in time
    phase.submitted = len(ids)
    # an agent's idle time between two tasks means something only if it runs one at a time
    times = await _store_times(p, set(ids))
    first, last = _fill_from_store(phase, times, one_at_a_time=slots == 1)
    phase.started_at = first = min(first, wall0)
    phase.window = (last if phase.completed >= n else cut) - first
    return phase


def _traced(p: Platform) -> Any:
    """Tracing on, as with an OTLP endpoint, but spans counted instead of sent: every submit
    in a span of its own (an API request's), so each task carries a trace context, gets a
    dispatch span and its handler's context. Returns the counter of exported spans."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Counting(SpanExporter):
        spans = 0

        def export(self, spans: Any) -> SpanExportResult:
            Counting.spans += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Counting()))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("bench")
    submit = p.dispatcher.submit

    async def submit_in_a_span(*args: Any, **kwargs: Any) -> Any:
        with tracer.start_as_current_span("bench.submit"):
            return await submit(*args, **kwargs)

    p.dispatcher.submit = submit_in_a_span  # type: ignore[method-assign]
    return provider, Counting


async def measure_corral(args: argparse.Namespace) -> tuple[Phase, Phase]:
    async with c.live_platform(database_url=args.database_url) as p:
        tracing = _traced(p) if args.traced else None
        org = await c.bench_org(p)
        agents = [
            await p.controller.provision(
                org,
                name=f"worker-{i}",
                role="worker",
                request=ContainerRequest(),
                slots=args.slots,
            )
            for i in range(AGENTS)
        ]
        for agent in agents:
            await p.controller.wait_running(agent.id, timeout=60)
        await _idle(p, org, WARMUP, record=False)
        idle = await _idle(p, org, args.idle, record=True)
        print(f"  corral: {args.idle} tasks one at a time done", flush=True)
        load = await _load(
            p, org, args.tasks, args.budget, submitters=args.submitters, slots=args.slots
        )
        print(f"  corral: load phase done ({load.completed:,} of {load.n:,})", flush=True)
        if tracing is not None:
            provider, counted = tracing
            provider.force_flush()
            print(f"  corral: traced, {counted.spans:,} control-plane spans exported", flush=True)
    return idle, load


# -- the peer: Celery with Redis -----------------------------------------------------------


def _celery_app(broker: str, queue: str) -> tuple[Any, Any]:
    from celery import Celery

    app = Celery("corral_bench", broker=broker, backend=broker)
    app.conf.update(
        task_default_queue=queue,
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )

    @app.task(name="corral_bench.noop")  # type: ignore[untyped-decorator]
    def noop() -> float:
        return time.time()  # when the worker finished it

    return app, noop


def celery_worker(broker: str, queue: str) -> None:
    """The worker process: 2 prefork children consuming ``queue``."""
    app, _ = _celery_app(broker, queue)
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={AGENTS}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            queue,
            "-n",
            f"corral-bench-{os.getpid()}@localhost",
        ]
    )


@contextlib.contextmanager
def _worker(broker: str, queue: str) -> Any:
    cmd = [sys.executable, __file__, "--celery-worker", "--redis", broker, "--queue", queue]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the group this run started
                proc.wait()
            if proc.returncode not in (0, -signal.SIGTERM):
                log.seek(0)
                print(f"celery worker exited {proc.returncode}:\n{log.read().decode()[-2000:]}")


def measure_celery(args: argparse.Namespace) -> tuple[Phase, Phase]:
    import redis
    from celery.result import ResultSet

    queue = f"corral-bench-{uuid.uuid4().hex[:8]}"
    app, noop = _celery_app(args.redis, queue)
    sent: list[str] = []
    try:
        with _worker(args.redis, queue) as proc:
            first = noop.delay()
            up = time.monotonic() + 60
            while not first.ready():  # the worker is up and consuming
                if proc.poll() is not None or time.monotonic() > up:
                    raise RuntimeError("the celery worker did not start")
                time.sleep(0.05)
            sent.append(first.id)
            for _ in range(WARMUP):
                warm = noop.delay()
                warm.get(timeout=10)
                sent.append(warm.id)
            idle = Phase(n=args.idle, submitted=args.idle)
            for _ in range(args.idle):
                t0 = time.perf_counter()
                wall = time.time()
                result = noop.delay()
                finished = result.get(timeout=10)
                idle.caller.append(time.perf_counter() - t0)
                idle.latency.append(finished - wall)
                sent.append(result.id)
            idle.completed = args.idle
            print(f"  celery: {args.idle} tasks one at a time done", flush=True)

            load = Phase(n=args.tasks)
            submitted_at: list[float] = []
            results = []
            t0 = time.perf_counter()
            for _ in range(args.tasks):
                submitted_at.append(time.time())
                results.append(noop.delay())
            load.submit_seconds = time.perf_counter() - t0
            load.started_at, load.all_in_at = submitted_at[0], time.time()
            load.submitted = len(results)
            sent += [r.id for r in results]
            remaining = max(1.0, args.budget - load.submit_seconds)
            try:
                finished = ResultSet(results).join_native(timeout=remaining, propagate=False)
            except Exception:  # the budget ran out: count what finished
                finished = [r.result if r.ready() else None for r in results]
            done = [f for f in finished if isinstance(f, float)]
            load.completed = len(done)
            load.done_at = done
            load.latency = [
                f - s if isinstance(f, float) else float("inf")
                for f, s in zip(finished, submitted_at, strict=True)
            ]
            end = max(done) if load.completed == load.n else time.time()
            load.window = end - submitted_at[0]
            print(f"  celery: load phase done ({load.completed:,} of {load.n:,})", flush=True)
    finally:
        client = redis.Redis.from_url(args.redis)
        keys = [f"celery-task-meta-{i}" for i in sent if i]
        for at in range(0, len(keys), 1000):
            client.delete(*keys[at : at + 1000])
        client.delete(queue, f"_kombu.binding.{queue}")
        client.close()
    return idle, load


# -- report --------------------------------------------------------------------------------


def _lat(values: list[float], p: float, budget: float) -> str:
    v = c.pct(values, p)
    return f"> {budget:.0f} s" if v == float("inf") else c.ms(v)


def report(
    args: argparse.Namespace,
    corral: tuple[Phase, Phase],
    peer: tuple[Phase, Phase] | None,
) -> None:
    idle, load = corral
    p_idle, p_load = peer if peer else (None, None)
    t = c.Table(
        f"task dispatch end to end ({AGENTS} agents, no-op tasks, durable store, own nats-server)",
        "celery",
    )
    rt50 = c.pct(idle.caller, 50)
    t.add(
        f"idle: round trip p50 (n={len(idle.caller)})",
        c.ms(rt50),
        f"≤ {c.ms(TARGET_IDLE_P50)} ({c.met(rt50, TARGET_IDLE_P50)})",
        measured=c.ms(c.pct(p_idle.caller, 50)) if p_idle else "",
        notes=c.ms(CELERY_NOTES["idle p50"]),
    )
    t.add(
        "idle: round trip p99",
        c.ms(c.pct(idle.caller, 99)),
        measured=c.ms(c.pct(p_idle.caller, 99)) if p_idle else "",
        notes=c.ms(CELERY_NOTES["idle p99"]),
    )
    t.add(
        "idle: submit → completed p50 (store / worker clock)",
        c.ms(c.pct(idle.latency, 50)),
        measured=c.ms(c.pct(p_idle.latency, 50)) if p_idle else "",
    )
    for step, values in idle.steps.items():
        if "next" in step:  # between two idle tasks the caller, not the platform, waits
            continue
        t.add(f"  idle: {step} p50", c.ms(c.pct(values, 50)))
    t.add(
        f"load: {load.n:,} at once, completed",
        f"{load.completed:,}",
        measured=f"{p_load.completed:,}" if p_load else "",
    )
    t.add(
        "load: throughput (first submit → last completion)",
        c.rate(load.rate),
        f"≥ {c.rate(TARGET_RATE)} ({c.met(load.rate, TARGET_RATE, lower_is_better=False)})",
        measured=c.rate(p_load.rate) if p_load else "",
        notes=c.rate(CELERY_NOTES["rate"]),
    )
    t.add(
        "load: completions/s once all were submitted",
        c.rate(load.rate_after_submits),
        measured=c.rate(p_load.rate_after_submits) if p_load else "",
    )
    t.add(
        "load: submit rate (accepted)",
        c.rate(load.submitted / load.submit_seconds)
        + ("" if load.submitted == load.n else f" ({load.submitted:,} in the budget)"),
        measured=c.rate(p_load.submitted / p_load.submit_seconds) if p_load else "",
    )
    t.add(
        "load: submit → completed p50",
        _lat(load.latency, 50, args.budget),
        measured=_lat(p_load.latency, 50, args.budget) if p_load else "",
    )
    t.add(
        "load: submit → completed p99",
        _lat(load.latency, 99, args.budget),
        measured=_lat(p_load.latency, 99, args.budget) if p_load else "",
    )
    for step, values in load.steps.items():
        t.add(f"  load: {step} p50", c.ms(c.pct(values, 50)))
    t.print()
    if load.completed < load.n:
        print(
            f"\nnote: corral completed {load.completed:,} of {load.n:,} tasks within the "
            f"{args.budget:.0f} s budget; its throughput is over that window"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=20_000, help="tasks submitted at once")
    ap.add_argument("--idle", type=int, default=200, help="tasks one at a time")
    ap.add_argument("--budget", type=float, default=90.0, help="seconds for each load phase")
    ap.add_argument(
        "--submitters",
        type=int,
        default=64,
        help="callers submitting at once in the load phase, each waiting until its task is "
        "durable, as an API serves many clients (the peer's client is one synchronous caller; "
        "its workers, not its client, are what limits it)",
    )
    ap.add_argument(
        "--slots",
        type=int,
        default=64,
        help="tasks each agent runs at once (Celery's 2 workers prefetch 4 each)",
    )
    ap.add_argument(
        "--database-url",
        default=None,
        help="run on this database instead of SQLite (a PostgreSQL database is EMPTIED first)",
    )
    ap.add_argument("--no-celery", action="store_true", help="skip the Celery peer")
    ap.add_argument(
        "--traced",
        action="store_true",
        help="tracing on (spans counted in process, not sent): its cost on the dispatch path",
    )
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the peer's broker")
    ap.add_argument("--celery-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--queue", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.celery_worker:
        celery_worker(args.redis, args.queue)
        return

    c.header("dispatch")
    before = {p.pid for p in c.children()}
    limit = 3 * args.budget + 120
    corral = c.bounded(measure_corral(args), limit, before)

    peer: tuple[Phase, Phase] | None = None
    if args.no_celery:
        print("celery: skipped (--no-celery); its figures below are from the notes")
    elif not (c.importable("celery") and c.importable("redis")):
        print("celery: not importable here, skipped; its figures below are from the notes "
              "(pip install 'celery[redis]' to measure it side by side)")  # fmt: skip
    elif not c.port_open("127.0.0.1", 6379):
        print("celery: no Redis on 127.0.0.1:6379, skipped; its figures are from the notes")
    else:
        with c.watchdog(limit, before):
            try:
                peer = measure_celery(args)
            except Exception as exc:  # the peer failing must not hide Corral's figures
                print(f"celery: the peer run failed ({type(exc).__name__}: {exc}); skipped")

    report(args, corral, peer)
    c.report_leftovers(before)


if __name__ == "__main__":
    main()
