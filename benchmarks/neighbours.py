"""The noisy neighbour: how org B's tasks fare while org A's agent floods the bus.

Org B (standard plan) runs one built-in worker; its tasks go one at a time and each round
trip is timed (submit → ``completed`` seen on the platform's event hub). First quietly, then
while org A's agent (standard plan, a hostile program: ``benchmarks/_flooder.py``) publishes
~0.9 MB messages on its own status and events subjects as fast as it can for ``--seconds``.
It prints B's latency p50/p99 quiet and under the flood, how many of B's tasks completed
during the flood, whether B's agent was restarted (lost heartbeats), and what A saw (messages
sent, refused, and the first refusal).

Run: ``python benchmarks/neighbours.py [--quiet 100] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import _common as c

from corral.control.platform import Platform
from corral.domain.admission import ContainerRequest
from corral.domain.quantities import parse
from corral.domain.tasks import Priority, Requirements
from corral.domain.tenancy import Organization

FLOODER = Path(__file__).with_name("_flooder.py")


async def _round_trip(
    p: Platform, org: Organization, events: asyncio.Queue[dict[str, Any]]
) -> float:
    t0 = time.perf_counter()
    rec = await p.dispatcher.submit(
        org,
        role="worker",
        agent=None,
        priority=Priority.NORMAL,
        deadline=None,
        requirements=Requirements(),
        payload={"op": "echo"},
    )
    while True:
        ev = await asyncio.wait_for(events.get(), timeout=120)
        task = ev.get("task") if ev.get("kind") == "task" else None
        if task and task["id"] == rec.id and task["state"] == "completed":
            return time.perf_counter() - t0


async def run(args: argparse.Namespace) -> None:
    async with c.live_platform(heartbeat_seconds=1.0) as p:
        b = (await p.tenants.create("neighbour-b", "standard")).org
        a = (await p.tenants.create("flooder-a", "standard")).org
        worker = await p.controller.provision(
            b, name="worker", role="worker", request=ContainerRequest()
        )
        await p.controller.wait_running(worker.id, timeout=60)
        async with p.hub.subscribe(b.slug) as events:
            quiet = [await _round_trip(p, b, events) for _ in range(args.quiet)]
            flooder = await p.controller.provision(
                a,
                name="flooder",
                role="flood",
                request=ContainerRequest(cpu_limit=parse(args.flooder_cpu))
                if args.flooder_cpu
                else ContainerRequest(),
                command=[sys.executable, "-c", FLOODER.read_text(), str(args.seconds)],
            )
            flood: list[float] = []
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                flood.append(await _round_trip(p, b, events))
        report_file = (
            p.data_dir
            / "agents"
            / "orgs"
            / a.slug
            / "agents"
            / flooder.id
            / "workspace"
            / "flood.json"
        )
        after = await p.controller.get_agent(b, worker.id)
        deadline = time.monotonic() + 60
        while not report_file.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # the flooder writes its report when its flood is over
        seen = json.loads(report_file.read_text()) if report_file.exists() else {}
    print(f"\norg B, one task at a time: quiet vs while A floods ({args.seconds:.0f} s)")
    print(f"  tasks completed   {len(quiet):>8} {len(flood):>10}")
    print(f"  round trip p50    {c.ms(c.pct(quiet, 50)):>8} {c.ms(c.pct(flood, 50)):>10}")
    print(f"  round trip p99    {c.ms(c.pct(quiet, 99)):>8} {c.ms(c.pct(flood, 99)):>10}")
    ratio = c.pct(flood, 95) / c.pct(quiet, 95) if quiet and flood else float("inf")
    print(f"B's p95 under the flood: {ratio:.2f}× its quiet figure (goal ≤ 2×)")
    print(f"B's agent restarts: {after.restarts} (goal 0)")
    if seen:
        print(
            f"A's flooder: {seen.get('sent', 0):,} messages sent, "
            f"{seen.get('refused', 0):,} refused; first refusal: {seen.get('firstRefusal') or '-'}"
        )
    else:
        print("A's flooder left no report (it did not get to the end of its flood)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quiet", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--flooder-cpu",
        default="",
        help="a CPU limit for the flooder (e.g. 500m); default: its plan's default limit",
    )
    args = ap.parse_args()
    c.header("noisy neighbour: org B's tasks while org A's agent floods the bus")
    before = {proc.pid for proc in c.children()}
    c.bounded(run(args), 600, before)
    c.report_leftovers(before)


if __name__ == "__main__":
    main()
