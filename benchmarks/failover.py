"""Replicated control planes: how long a takeover takes, and what standbys cost the leader.

Real parts only: ``corral up`` processes with ``CORRAL_HA`` on a PostgreSQL database created
for the run (and dropped after it), one nats-server the run starts as the external NATS, local
agent processes running the built-in no-op (``{"op": "echo"}``).

- takeover: three replicas, a trickle of tasks submitted through a standby (one every 20 ms);
  the leader is killed with -9 (``--kills`` times, a fresh replica started after each so that
  three run again). Figures: from the kill until the next task is dispatched (the store's
  ``dispatched`` history, which needs the new leader up and its agents adopted), and until a
  replica answers ``/readyz`` as the leader. Goal: p50/p99 ≤ 2 s. Where each takeover's time
  went, from the new leader's log: the election (kill → "leads now"), each step of its start
  and recovery (``recovered in …``), and the first dispatch after that.
- throughput: ``--tasks`` tasks submitted at once (32 callers, the admin key, straight to the
  leader) until all are completed, with one replica and then with three. Goal: three no worse
  than 10 % below one.

Run: ``python benchmarks/failover.py [--kills 10 (0: no takeover)] [--tasks 3000 (0: no
throughput)] [--rounds 1] [--lease 2]
[--database-url postgresql://postgres@127.0.0.1:5432/test]`` (the URL names a server and a
database to connect to; the run works in a database of its own). Nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import _common as c
import asyncpg  # type: ignore[import-untyped]
import httpx
import psutil

from corral.bus.accounts import BusAuthority
from corral.bus.server import EmbeddedNats

LOGS: Path | None = None  # --logs: where the replicas' logs are kept
TAKEOVER_GOAL = 2.0
THROUGHPUT_GOAL = 0.9  # three replicas against one


@contextlib.asynccontextmanager
async def fresh_database(server: str) -> AsyncIterator[str]:
    server = server.replace("postgresql+asyncpg://", "postgresql://")
    name = f"corral_failover_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        conn = await asyncpg.connect(server)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


class Replicas:
    """``corral up`` replicas sharing a data directory, a database and a NATS."""

    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.data = data
        self.env = env
        self.procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        self._n = 0

    def start(self) -> str:
        self._n += 1
        name = f"r{self._n}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env |= self.env | {"CORRAL_REPLICA_NAME": name, "CORRAL_GATEWAY_PORT": "0"}
        with (self.data.parent / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "corral.cli", "up", "--data-dir", str(self.data)]
                + ["--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = (proc, f"http://127.0.0.1:{port}")
        return name

    def url(self, name: str) -> str:
        return self.procs[name][1]

    def alive(self) -> list[str]:
        return [n for n, (p, _) in self.procs.items() if p.poll() is None]

    async def role(self, client: httpx.AsyncClient, name: str) -> str | None:
        try:
            r = await client.get(self.url(name) + "/readyz", timeout=2)
            return str(r.json()["role"]) if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    async def leader(self, client: httpx.AsyncClient, *, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in self.alive():
                if await self.role(client, name) == "leader":
                    return name
            await asyncio.sleep(0.02)
        raise TimeoutError("no replica leads")

    async def standing_by(self, client: httpx.AsyncClient, name: str) -> None:
        deadline = time.monotonic() + 120
        while await self.role(client, name) != "standby":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} does not stand by")
            await asyncio.sleep(0.05)

    def kill(self, name: str) -> None:
        proc = self.procs[name][0]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if LOGS is not None:
            LOGS.mkdir(parents=True, exist_ok=True)
            for name in self.procs:
                log = self.data.parent / f"{name}.log"
                (LOGS / f"{self.data.parent.name}-{name}.log").write_bytes(log.read_bytes())


@contextlib.asynccontextmanager
async def cluster(
    server: str, lease: float, *, level: str = "WARNING"
) -> AsyncIterator[tuple[Replicas, str]]:
    with tempfile.TemporaryDirectory(prefix="corral-failover-") as tmp:
        ops = Path(tmp) / "operator"
        authority = BusAuthority(ops / "keys", caps=None)
        async with (
            fresh_database(server) as url,
            EmbeddedNats(ops / "server", authority.trust()) as nats,
        ):
            env = {
                "CORRAL_HA": "1",
                "CORRAL_DATABASE_URL": url,
                "CORRAL_NATS_URL": nats.url,
                "CORRAL_NATS_OPERATOR_SEED": (ops / "keys" / "operator.nk").read_text().strip(),
                "CORRAL_NATS_SYSTEM_SEED": (ops / "keys" / "system.nk").read_text().strip(),
                "CORRAL_LEASE_SECONDS": str(lease),
                "CORRAL_LOG_LEVEL": "INFO" if LOGS else level,
            }
            (Path(tmp) / "data").mkdir()
            replicas = Replicas(Path(tmp) / "data", env)
            try:
                yield replicas, url
            finally:
                replicas.stop_all()


def admin(replicas: Replicas) -> dict[str, str]:
    key = (replicas.data / "admin.key").read_text().strip()
    return {"Authorization": f"Bearer {key}"}


async def setup_org(client: httpx.AsyncClient, url: str, *, agents: int, slots: int) -> None:
    r = await client.post(url + "/v1/orgs", json={"name": "bench", "plan": "enterprise"})
    r.raise_for_status()
    for i in range(agents):
        r = await client.post(
            url + "/v1/orgs/bench/agents",
            json={"name": f"w{i}", "role": "general", "slots": slots, "wait": True},
        )
        r.raise_for_status()


async def submit(client: httpx.AsyncClient, url: str, key: str) -> None:
    body = {"role": "general", "payload": {"op": "echo"}, "idempotencyKey": key}
    while True:
        try:
            r = await client.post(url + "/v1/orgs/bench/tasks", json=body)
            if r.status_code in (200, 201):
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)


_STEP = re.compile(r"([a-z][a-z ]*?) (\d+\.\d+)")


def phases(log: Path, killed: datetime, dispatched: datetime) -> dict[str, float]:
    """Where a takeover's time went, from the new leader's log: the election (the kill until
    "leads now"), each step of its start and recovery, and the first dispatch after it."""
    elected: datetime | None = None
    steps: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            at = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            continue
        msg = str(entry.get("msg", ""))
        if at < killed:
            continue
        if elected is None and "leads now" in msg:
            elected = at
        elif elected is not None and msg.startswith("recovered in"):
            listed = msg[msg.find("(") + 1 : msg.rfind(")")]
            steps = {step: float(took) for step, took in _STEP.findall(listed)}
            steps["dispatch"] = max((dispatched - at).total_seconds(), 0.0)
            break
    if elected is None:
        return {}
    return {"election": (elected - killed).total_seconds(), **steps}


async def takeovers(
    server: str, kills: int, lease: float
) -> tuple[list[float], list[float], list[dict[str, float]]]:
    dispatched: list[float] = []
    elected: list[float] = []
    spent: list[dict[str, float]] = []
    async with (
        cluster(server, lease, level="INFO") as (replicas, url),
        httpx.AsyncClient(timeout=60) as client,
    ):
        for _ in range(3):
            replicas.start()
        leader = await replicas.leader(client)
        client.headers.update(admin(replicas))
        await setup_org(client, replicas.url(leader), agents=1, slots=4)
        db = await asyncpg.connect(url)
        front = {"name": next(n for n in replicas.alive() if n != leader)}
        n = 0

        async def trickle() -> None:
            nonlocal n
            while True:
                n += 1
                await submit(client, replicas.url(front["name"]), f"t{n}")
                await asyncio.sleep(0.02)

        feeding = asyncio.ensure_future(trickle())
        try:
            for k in range(kills):
                leader = await replicas.leader(client)
                for name in replicas.alive():
                    if name != leader:
                        await replicas.standing_by(client, name)
                front["name"] = next(n for n in replicas.alive() if n != leader)
                await asyncio.sleep(1.0)  # steady state: the trickle flows
                killed = datetime.now(UTC)
                started = time.monotonic()
                replicas.kill(leader)
                new = await replicas.leader(client)
                elected.append(time.monotonic() - started)
                while True:
                    at = await db.fetchval(
                        "SELECT min(at) FROM task_events WHERE to_state = 'dispatched' AND at > $1",
                        killed,
                    )
                    if at is not None:
                        break
                    await asyncio.sleep(0.02)
                dispatched.append((at - killed).total_seconds())
                log = replicas.data.parent / f"{new}.log"
                took: dict[str, float] = {}
                deadline = time.monotonic() + 30
                while not took.get("dispatch") and time.monotonic() < deadline:
                    took = phases(log, killed, at)
                    await asyncio.sleep(0.1)
                spent.append(took)
                steps = ", ".join(f"{step} {t:.2f}" for step, t in took.items())
                print(
                    f"  kill {k + 1}: {leader} → {new}: leader in {c.secs(elected[-1])}, "
                    f"next dispatch in {c.secs(dispatched[-1])} ({steps})",
                    flush=True,
                )
                replicas.start()
        finally:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding
            await db.close()
    return dispatched, elected, spent


def _cpu(proc: psutil.Process, *, ended_children: bool = False) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    spent = t.user + t.system
    if ended_children:  # e.g. PostgreSQL's backends that ended, counted to the postmaster
        spent += t.children_user + t.children_system
    return float(spent)


def cpu_seconds(replicas: Replicas, leader: str) -> dict[str, float]:
    """CPU seconds used so far: the leader, the standbys, the agents (every descendant of a
    replica), the nats-server (a child of this process), PostgreSQL (every ``postgres``
    process of the machine, other work's too) and the benchmark itself."""
    out = dict.fromkeys(("leader", "standbys", "agents", "nats", "postgres", "benchmark"), 0.0)
    for name, (proc, _) in replicas.procs.items():
        if proc.poll() is not None:
            continue
        try:
            me = psutil.Process(proc.pid)
            kids = me.children(recursive=True)
        except psutil.Error:
            continue
        out["leader" if name == leader else "standbys"] += _cpu(me)
        out["agents"] += sum(_cpu(k) for k in kids)
    this = psutil.Process()
    out["benchmark"] = _cpu(this)
    out["nats"] = sum(_cpu(k) for k in this.children() if "nats-server" in k.name())
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "postgres":
            out["postgres"] += _cpu(proc, ended_children=True)
    return out


async def throughput(server: str, lease: float, *, replicas_n: int, tasks: int) -> float:
    async with cluster(server, lease) as (replicas, url), httpx.AsyncClient(timeout=120) as client:
        for _ in range(replicas_n):
            replicas.start()
        leader = await replicas.leader(client)
        for name in replicas.alive():
            if name != leader:
                await replicas.standing_by(client, name)
        client.headers.update(admin(replicas))
        target = replicas.url(leader)
        await setup_org(client, target, agents=4, slots=16)
        db = await asyncpg.connect(url)
        keys = iter(range(tasks))

        async def caller() -> None:
            for i in keys:
                await submit(client, target, f"p{i}")

        used = cpu_seconds(replicas, leader)
        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(32)))
        while await db.fetchval("SELECT count(*) FROM tasks WHERE state = 'completed'") < tasks:
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        after = cpu_seconds(replicas, leader)
        await db.close()
        spent = ", ".join(f"{k} {after[k] - used[k]:.1f}" for k in after)
        print(
            f"  {replicas_n} replica{'s' if replicas_n > 1 else ''}: {c.rate(tasks / took)} "
            f"in {took:.1f} s; CPU seconds: {spent}; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        return tasks / took


async def main(args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, str]] = []
    if args.kills > 0:
        print(f"\ntakeover: {args.kills} kills of the leader, lease {args.lease:.1f} s", flush=True)
        dispatched, elected, spent = await takeovers(args.database_url, args.kills, args.lease)
        names = list(dict.fromkeys(step for took in spent for step in took))
        print("\nwhere a takeover's time went (seconds, p50 / max over the kills):")
        for step in names:
            values = [took.get(step, 0.0) for took in spent]
            print(f"  {step:<10} {c.pct(values, 50):6.2f} / {max(values):6.2f}")
        p50, p99 = c.pct(dispatched, 50), c.pct(dispatched, 99)
        rows += [
            ("kill -9 → next dispatch p50", c.secs(p50), f"≤ 2 s, {c.met(p50, TAKEOVER_GOAL)}"),
            ("kill -9 → next dispatch p99", c.secs(p99), f"≤ 2 s, {c.met(p99, TAKEOVER_GOAL)}"),
            ("kill -9 → a replica leads p50", c.secs(c.pct(elected, 50)), ""),
            ("kill -9 → a replica leads p99", c.secs(c.pct(elected, 99)), ""),
        ]
    if args.tasks > 0:
        print("\nthroughput: one replica, then three", flush=True)
        ones: list[float] = []
        threes: list[float] = []
        for _ in range(args.rounds):  # back to back, so that both see the same machine
            ones.append(
                await throughput(args.database_url, args.lease, replicas_n=1, tasks=args.tasks)
            )
            threes.append(
                await throughput(args.database_url, args.lease, replicas_n=3, tasks=args.tasks)
            )
        one, three = c.pct(ones, 50), c.pct(threes, 50)
        ratio = c.pct([t / o for o, t in zip(ones, threes, strict=True)], 50)
        each = (
            f", each round: {', '.join(f'{t / o:.0%}' for o, t in zip(ones, threes, strict=True))}"
        )
        rows += [
            (f"throughput, 1 replica ({args.tasks} tasks)", c.rate(one), ""),
            (
                f"throughput, 3 replicas ({args.tasks} tasks)",
                f"{c.rate(three)} ({ratio:.0%} of one{each if args.rounds > 1 else ''})",
                f"≥ 90 %, {c.met(ratio, THROUGHPUT_GOAL, lower_is_better=False)}",
            ),
        ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print("\nfailover")
    for row in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="throughput: one then three replicas, this often"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "CORRAL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--logs", type=Path, help="keep the replicas' logs (INFO) here")
    arguments = parser.parse_args()
    LOGS = arguments.logs
    before = {p.pid for p in c.children()}
    c.header("failover")
    with c.watchdog(3600, before):
        asyncio.run(main(arguments))
    c.report_leftovers(before)
