"""The bus ingress budget, enforced with real processes and a real nats-server.

Org A's agent (a hostile program: ``benchmarks/_flooder.py``) publishes ~0.9 MB messages as
fast as it can; the platform sees it among the server's busiest publishers, takes it off the
bus (credentials revoked, process stopped) and marks it ``failed`` with the measured rate and
the budget, while org B's tasks keep completing and B's agent is untouched. An ordinary busy
agent (many tiny tasks, on the smallest plan) is never taken off."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Live, agent_processes
from tests.support import eventually

FLOODER = Path(__file__).parents[2] / "benchmarks" / "_flooder.py"


async def test_a_flooding_agent_is_taken_off_the_bus_and_its_neighbour_goes_on(
    live: Live,
) -> None:
    await live.org("org-a")
    await live.org("org-b")
    worker = await live.agent("org-b", "w", role="worker")
    r = await live.admin.post(
        "/v1/orgs/org-a/agents",
        json={
            "name": "flood",
            "role": "flood",
            "command": [sys.executable, "-c", FLOODER.read_text(), "120"],
        },
    )
    assert r.status_code == 201, r.text
    flooder = r.json()["id"]

    async def taken_off() -> dict[str, Any] | None:
        a = (await live.admin.get(f"/v1/orgs/org-a/agents/{flooder}")).json()
        return a if a["state"] == "failed" else None

    completed = 0
    cut: dict[str, Any] | None = None
    while cut is None:  # B's tasks, one after another, until A is off the bus
        t = await live.wait_task("org-b", (await live.task("org-b", role="worker"))["id"])
        assert t["state"] == "completed", t
        completed += 1
        cut = await taken_off()
        assert completed < 2000, "the flooder was never taken off the bus"
    assert "taken off the bus" in cut["detail"], cut
    assert "ingress budget of 8 MiB/s" in cut["detail"], cut
    assert cut["restarts"] == 0, cut  # failed for good, not restarted as after a crash
    # its process is stopped (not left flooding off the bus, not restarted)
    await eventually(lambda: not agent_processes(flooder), timeout=30, message="flooder gone")
    shown = (await live.admin.get(f"/v1/orgs/org-a/agents/{flooder}")).json()
    assert shown["state"] == "failed" and shown["detail"] == cut["detail"], shown
    # nothing of B was touched: its agent never lost a heartbeat, its work goes on
    b = (await live.admin.get(f"/v1/orgs/org-b/agents/{worker['id']}")).json()
    assert b["state"] == "running" and b["restarts"] == 0, b
    for _ in range(3):
        t = await live.wait_task("org-b", (await live.task("org-b", role="worker"))["id"])
        assert t["state"] == "completed", t
    # counted for the operator
    metrics = (await live.admin.get("/metrics")).text
    assert 'corral_agents_cut_off_total{org="org-a"} 1.0' in metrics, metrics[-2000:]
    # A's ordinary work goes on with another agent
    await live.agent("org-a", "w", role="worker")
    t = await live.wait_task("org-a", (await live.task("org-a", role="worker"))["id"])
    assert t["state"] == "completed", t


async def test_an_ordinary_busy_agent_is_not_taken_off(live: Live) -> None:
    await live.org("small", plan="free")  # the smallest ingress budget
    await live.roles("small", {"name": "worker", "maxAgents": 2})  # w, and one more for load
    worker = await live.agent("small", "w", role="worker")
    ids: list[str] = []
    for _ in range(10):  # 500 tiny tasks, 50 submitted at once
        batch = [live.task("small", role="worker", payload={"op": "echo"}) for _ in range(50)]
        ids += [t["id"] for t in await asyncio.gather(*batch)]
    for task_id in ids:
        t = await live.wait_task("small", task_id, timeout=120)
        assert t["state"] == "completed", t
    w = (await live.admin.get(f"/v1/orgs/small/agents/{worker['id']}")).json()
    assert w["state"] == "running" and w["restarts"] == 0, w
    metrics = (await live.admin.get("/metrics")).text
    assert "corral_agents_cut_off_total{" not in metrics
