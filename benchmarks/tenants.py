"""A thousand organizations on one node: what each one costs, and what many cost together.

Every part is real: ``corral up`` as its own process on the embedded default (SQLite, its own
nats-server, local agent processes), driven over HTTP as a user would. It

1. creates ``--orgs`` standard-plan organizations (``--concurrency`` POSTs in flight) and
   prints, per step of 100: orgs/s, POST p50/p99, the control plane's and nats-server's RSS and
   CPU seconds, and the largest account JWT the server holds;
2. restarts the control plane with every org and times it until the API serves;
3. provisions one agent in each of ``--agent-orgs`` orgs (16 at a time), each running up to
   ``--slots`` tasks at once, and pauses them all;
4. submits ``--tasks`` tasks to each of ``--task-orgs`` orgs, one batch per org
   (``POST tasks/batch``), and times them until all completed: first with their agents paused
   (each is woken), then again with them running; with the CPU seconds each process (the
   control plane, nats-server, the agents, this client) used meanwhile;
5. kills the control plane (-9) with those agents running, starts it again and times it until
   the API serves, until every agent is back and until a new task completed.

    python benchmarks/tenants.py [--orgs 1000] [--agent-orgs 300] [--task-orgs 200] [--slots 20]

An agent's slots default to the tasks sent to each org (20), as the one-org figure of
``benchmarks/dispatch.py`` is taken with agents of 64 slots: each org's tasks then travel to
its agent together and run at once. ``--slots 1`` measures agents that run one task at a time,
where each org's tasks go one after another and the figure is bound by the round trip of one
task (agent → events → control plane → next task), not by the platform's throughput.

``--agent-orgs 0`` skips steps 3 and 4 (step 5 then kills a control plane with no agent and
times it until the API serves and its recovery is done); ``--task-orgs 0`` skips step 4.

The embedded default's JetStream file cap holds 51 standard orgs' reservations (8 GiB over
160 MiB each: INBOX, EVENTS and the object store; a ceiling,
not space taken); the run raises ``CORRAL_NATS_MAX_STORAGE`` to hold them all, as an operator
with the disk for it would. Goals (issue "Hundreds of organizations, for real"): >= 20 orgs/s
with p99 <= 100 ms at the 1,000th; <= 200 KiB per idle org in the control plane and <= 100 KiB
in nats-server; a restart with 1,000 orgs <= 10 s, and <= 10 s to a serving API with 200 agents
running; tasks across 200 orgs >= 2,000/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, met, pct  # noqa: E402

from corral.domain.plans import get_plan

CORRAL = [sys.executable, "-m", "corral.cli"]
KiB, MiB, GiB = 1024, 1024**2, 1024**3
STANDARD_RESERVATION = get_plan("standard").bus.jetstream_storage  # INBOX + EVENTS + OBJECTS


class ControlPlane:
    """``corral up`` in its own process on one data directory."""

    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.data = data
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(data.parent / "corral-up.log", "ab")  # noqa: SIM115
        self.url = ""
        self.key = ""

    def start(self) -> float:
        """Start it; the seconds until its API answered ``/healthz``."""
        (self.data / "api.url").unlink(missing_ok=True)
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [*CORRAL, "up", "--data-dir", str(self.data), "--port", "0"],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = ""
        while not self.url:  # read until written: an empty file can be seen a moment before
            if self.proc.poll() is not None:
                raise SystemExit(f"corral up exited with {self.proc.returncode}; see its log")
            with contextlib.suppress(FileNotFoundError):
                self.url = (self.data / "api.url").read_text().strip()
            if not self.url:
                time.sleep(0.02)
        self.key = (self.data / "admin.key").read_text().strip()
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return time.monotonic() - began
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(timeout=60)

    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def nats(self) -> psutil.Process:
        for child in self.process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "nats-server" in child.name():
                    return child
        raise SystemExit("no nats-server under the control plane")

    def largest_claim(self) -> int:
        return max(
            (f.stat().st_size for f in (self.data / "nats/server/jwt").glob("*.jwt")), default=0
        )


def cpu_by_process(cp: ControlPlane) -> dict[str, float]:
    """CPU seconds used so far by the control plane, nats-server, the agents (with their
    fork servers; those gone since are not counted), and this client."""

    def cpu(p: psutil.Process) -> float:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            return float(t.user + t.system)
        return 0.0

    root = cp.process()
    kids = root.children(recursive=True)
    nats = cp.nats().pid
    me = psutil.Process().cpu_times()
    return {
        "control plane": cpu(root),
        "nats-server": sum(cpu(k) for k in kids if k.pid == nats),
        "agents": sum(cpu(k) for k in kids if k.pid != nats),
        "this client": float(me.user + me.system),
    }


def figures(p: psutil.Process) -> tuple[int, float]:
    """(RSS bytes, CPU seconds) of one process."""
    cpu = p.cpu_times()
    return p.memory_info().rss, cpu.user + cpu.system


async def timed_all(
    jobs: list[Callable[[], Awaitable[None]]], concurrency: int
) -> tuple[list[float], float]:
    """Run every job, ``concurrency`` at a time; each one's seconds, and the wall time."""
    gate = asyncio.Semaphore(concurrency)
    took: list[float] = []

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            began = time.monotonic()
            await job()
            took.append(time.monotonic() - began)

    began = time.monotonic()
    await asyncio.gather(*(one(j) for j in jobs))
    return took, time.monotonic() - began


def expect(r: httpx.Response, status: int) -> None:
    if r.status_code != status:
        raise SystemExit(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")


async def completed_tasks(http: httpx.AsyncClient) -> int:
    # the one series it needs: a whole scrape (350 KB with 300 orgs at work) polled several
    # times a second cost the control plane and this client CPU the wave itself was using
    text = (await http.get("/metrics", params={"name[]": "corral_tasks"})).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("corral_tasks{") and 'state="completed"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def until(probe: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> float:
    began = time.monotonic()
    while not await probe():
        if time.monotonic() - began > timeout:
            raise SystemExit(f"gave up waiting for {what} after {timeout:.0f} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - began


def client(cp: ControlPlane) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=cp.url,
        headers={"Authorization": f"Bearer {cp.key}"},
        timeout=120,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )


async def create_orgs(cp: ControlPlane, names: list[str], concurrency: int) -> dict[str, Any]:
    print("\n1. creating standard-plan organizations")
    print(
        f"  {'orgs':>5}  {'orgs/s':>7}  {'POST p50':>9}  {'POST p99':>9}  {'corral RSS':>10}  "
        f"{'corral CPU':>10}  {'nats RSS':>9}  {'nats CPU':>8}  {'largest JWT':>11}"
    )
    corral, nats = cp.process(), cp.nats()
    rss0, _ = figures(corral)
    nrss0, _ = figures(nats)
    last: dict[str, Any] = {}
    async with client(cp) as http:
        for start in range(0, len(names), 100):
            step = names[start : start + 100]
            _, cpu_a = figures(corral)
            _, ncpu_a = figures(nats)

            def job(name: str) -> Callable[[], Awaitable[None]]:
                async def post() -> None:
                    expect(
                        await http.post("/v1/orgs", json={"name": name, "plan": "standard"}), 201
                    )

                return post

            took, wall = await timed_all([job(n) for n in step], concurrency)
            rss, cpu_b = figures(corral)
            nrss, ncpu_b = figures(nats)
            last = {
                "rate": len(step) / wall,
                "p50": pct(took, 50),
                "p99": pct(took, 99),
                "rss": rss,
                "nrss": nrss,
            }
            print(
                f"  {start + len(step):>5}  {last['rate']:>7.1f}  {last['p50'] * 1000:>6.1f} ms  "
                f"{last['p99'] * 1000:>6.1f} ms  {rss / MiB:>6.1f} MiB  {cpu_b - cpu_a:>8.2f} s  "
                f"{nrss / MiB:>5.1f} MiB  {ncpu_b - ncpu_a:>6.2f} s  {cp.largest_claim():>8,} B",
                flush=True,
            )
    last["per_org"] = (last["rss"] - rss0) / len(names)
    last["nats_per_org"] = (last["nrss"] - nrss0) / len(names)
    print(
        f"  memory per idle org: control plane {last['per_org'] / KiB:,.1f} KiB, "
        f"nats-server {last['nats_per_org'] / KiB:,.1f} KiB"
    )
    return last


async def agents_and_tasks(
    cp: ControlPlane, args: argparse.Namespace, names: list[str]
) -> dict[str, float]:
    out: dict[str, float] = {}
    agent_orgs = names[: args.agent_orgs]
    if not agent_orgs:
        print("\n3. and 4. skipped (--agent-orgs 0)")
        return out
    async with client(cp) as http:
        ids: dict[str, str] = {}

        def provision(org: str) -> Callable[[], Awaitable[None]]:
            async def post() -> None:  # until it runs (a loaded machine may take > 30 s)
                r = await http.post(
                    f"/v1/orgs/{org}/agents", json={"name": "w", "slots": args.slots}
                )
                expect(r, 201)
                ids[org] = r.json()["id"]

                async def running() -> bool:
                    got = await http.get(f"/v1/orgs/{org}/agents/{ids[org]}")
                    state = got.json()["state"]
                    if state == "failed":
                        raise SystemExit(f"agent {ids[org]} failed to start")
                    return bool(state == "running")

                await until(running, timeout=600, what=f"agent {ids[org]}")

            return post

        took, wall = await timed_all([provision(o) for o in agent_orgs], 16)
        print(
            f"\n3. one agent in each of {len(agent_orgs)} orgs, 16 at a time: {wall:.1f} s, "
            f"p50 {pct(took, 50):.2f} s, p99 {pct(took, 99):.2f} s"
        )

        def pause(org: str) -> Callable[[], Awaitable[None]]:
            async def post() -> None:
                expect(await http.post(f"/v1/orgs/{org}/agents/{ids[org]}/pause"), 200)

            return post

        _, wall = await timed_all([pause(o) for o in agent_orgs], 16)
        print(f"   paused them all in {wall:.1f} s")

        task_orgs = agent_orgs[: args.task_orgs]
        if not task_orgs or args.tasks <= 0:
            print("\n4. skipped (--task-orgs 0)")
            return out
        body = {"role": "general", "payload": {"op": "echo"}}

        def submit(org: str, wave: int) -> Callable[[], Awaitable[None]]:
            # one batch per org; a connection the server closed as it was reused is sent
            # again: the keys make the second send answer with the tasks the first one made
            batch = {
                "tasks": [
                    {**body, "idempotencyKey": f"bench-{wave}-{n}"} for n in range(args.tasks)
                ]
            }

            async def post() -> None:
                for attempt in range(3):
                    try:
                        r = await http.post(f"/v1/orgs/{org}/tasks/batch", json=batch)
                    except (httpx.ReadError, httpx.RemoteProtocolError):
                        if attempt == 2:
                            raise
                        continue
                    expect(r, 201)
                    return

            return post

        total = len(task_orgs) * args.tasks
        spent: list[dict[str, float]] = []
        for wave, what in enumerate(("their agents woken from paused", "their agents running")):
            before = await completed_tasks(http)
            cpu_before = cpu_by_process(cp)
            began = time.monotonic()
            _, submitted = await timed_all([submit(o, wave) for o in task_orgs], 32)

            async def all_done(before: int = before) -> bool:
                return await completed_tasks(http) - before >= total

            await until(all_done, timeout=600, what="every task to complete")
            wall = time.monotonic() - began
            used = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_by_process(cp).items()}
            out[f"tasks_rate_{wave}"] = total / wall
            print(
                f"\n4.{wave + 1} {total:,} tasks across {len(task_orgs)} orgs ({what}; one batch "
                f"of {args.tasks} per org, 32 in flight, {args.slots} slot(s) per agent): "
                f"submitted at {total / submitted:,.0f}/s, "
                f"all completed at {total / wall:,.0f}/s end to end ({wall:.1f} s)\n"
                f"    CPU seconds meanwhile: "
                + ", ".join(f"{k} {v:.2f}" for k, v in used.items())
                + f" (of {wall * (os.cpu_count() or 1):.1f} on {os.cpu_count()} cores)"
            )
            spent.append(used)
        woken, running = spent
        per_wake = {k: (woken[k] - running[k]) / len(task_orgs) for k in woken}
        print(
            "    each wake's own cost (the first wave's CPU seconds less the second's, per "
            "agent): "
            + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in per_wake.items() if k != "this client")
            + "; see benchmarks/wake_floor.py for the least any process can spend on it"
        )
    return out


async def restart_with_agents(cp: ControlPlane, org: str, *, agents: bool) -> dict[str, float]:
    """Step 5; without ``agents`` (none was provisioned) no task is submitted after it."""
    cp.stop(kill=True)
    out = {"serving": cp.start()}
    began = time.monotonic() - out["serving"]
    async with client(cp) as http:

        async def recovered() -> bool:
            return bool((await http.get("/healthz")).json().get("recovery") == "done")

        await until(recovered, timeout=600, what="every agent to be back")
        out["agents"] = time.monotonic() - began
        if not agents:
            print(
                f"\n5. kill -9 with no agent, then start: API serving after "
                f"{out['serving']:.2f} s, recovery done after {out['agents']:.2f} s"
            )
            return out
        r = await http.post(
            f"/v1/orgs/{org}/tasks", json={"role": "general", "payload": {"op": "echo"}}
        )
        expect(r, 201)
        task = r.json()["id"]

        async def done() -> bool:
            got = (await http.get(f"/v1/orgs/{org}/tasks/{task}")).json()
            return bool(got["state"] == "completed")

        await until(done, timeout=600, what="a task after the restart")
        out["task"] = time.monotonic() - began
    print(
        f"\n5. kill -9 with the agents running, then start: API serving after "
        f"{out['serving']:.2f} s, every agent back after {out['agents']:.2f} s, a new task "
        f"completed after {out['task']:.2f} s"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4, help="org POSTs in flight")
    parser.add_argument("--agent-orgs", type=int, default=300)
    parser.add_argument("--task-orgs", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=20, help="tasks per org")
    parser.add_argument("--slots", type=int, default=20, help="tasks each agent runs at once")
    args = parser.parse_args()
    header("tenants")
    names = [f"t{n:04d}" for n in range(args.orgs)]
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        data = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env["CORRAL_NATS_MAX_STORAGE"] = str(max(8 * GiB, args.orgs * STANDARD_RESERVATION))
        cp = ControlPlane(data, env)
        with stopped(cp):
            first = cp.start()
            print(f"corral up on an empty data dir: API serving after {first:.2f} s")
            made = asyncio.run(create_orgs(cp, names, args.concurrency))
            cp.stop()
            restart = cp.start()
            print(
                f"\n2. restart with {args.orgs} orgs (no agents): API serving after {restart:.2f} s"
            )
            work = asyncio.run(agents_and_tasks(cp, args, names))
            again = asyncio.run(restart_with_agents(cp, names[0], agents=args.agent_orgs > 0))
        print_goals(args, made, restart, work, again)


@contextlib.contextmanager
def stopped(cp: ControlPlane) -> Iterator[None]:
    try:
        yield
    finally:
        if cp.proc is not None and cp.proc.poll() is None:
            cp.stop()


def print_goals(
    args: argparse.Namespace,
    made: dict[str, Any],
    restart: float,
    work: dict[str, float],
    again: dict[str, float],
) -> None:
    rows = [
        (
            f"orgs/s at the {args.orgs:,}th",
            f"{made['rate']:.1f}",
            ">= 20",
            met(made["rate"], 20, lower_is_better=False),
        ),
        (
            f"POST p99 at the {args.orgs:,}th",
            f"{made['p99'] * 1000:.1f} ms",
            "<= 100 ms",
            met(made["p99"], 0.1),
        ),
        (
            "control plane per idle org",
            f"{made['per_org'] / KiB:,.1f} KiB",
            "<= 200 KiB",
            met(made["per_org"], 200 * KiB),
        ),
        (
            "nats-server per idle org",
            f"{made['nats_per_org'] / KiB:,.1f} KiB",
            "<= 100 KiB",
            met(made["nats_per_org"], 100 * KiB),
        ),
        (f"restart with {args.orgs:,} orgs", f"{restart:.2f} s", "<= 10 s", met(restart, 10)),
        (
            "restart with agents running: API serving"
            if args.agent_orgs > 0
            else "restart after kill -9 (no agents): API serving",
            f"{again['serving']:.2f} s",
            "<= 10 s",
            met(again["serving"], 10),
        ),
    ]
    for wave, what in enumerate(("agents woken", "agents running")):
        rate = work.get(f"tasks_rate_{wave}")
        label = f"tasks across {args.task_orgs} orgs, {what}"
        if rate is None:
            rows.append((label, "skipped", ">= 2,000/s", ""))
        else:
            rows.append(
                (label, f"{rate:,.0f}/s", ">= 2,000/s", met(rate, 2000, lower_is_better=False))
            )
    print("\ngoals")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
