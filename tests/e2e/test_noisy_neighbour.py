"""A hostile tenant floods the bus; its neighbour does not notice.

Org A's agent (a hostile program: ``benchmarks/_flooder.py``) publishes ~0.9 MB messages on
its own status and events subjects as fast as it can for 10 s. Meanwhile org B's tasks keep
completing and B's agent keeps its heartbeats (never restarted); A is told its messages are
refused once its own share is full; afterwards, and after a restart of the control plane,
both orgs work. (How much slower B gets is a figure: ``benchmarks/neighbours.py``.)"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from corral.api.server import running
from tests.e2e.conftest import live_settings
from tests.support import eventually

FLOODER = Path(__file__).parents[2] / "benchmarks" / "_flooder.py"
FLOOD_SECONDS = 10


async def _task(client: httpx.AsyncClient, org: str, role: str) -> str:
    r = await client.post(f"/v1/orgs/{org}/tasks", json={"role": role, "payload": {"op": "echo"}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _finished(client: httpx.AsyncClient, org: str, task_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        t = (await client.get(f"/v1/orgs/{org}/tasks/{task_id}")).json()
        return t if t["state"] in {"completed", "failed", "blocked", "cancelled"} else None

    found: dict[str, Any] = await eventually(done, timeout=90, message=f"task {task_id} done")
    return found


async def test_a_flooding_tenant_fills_only_its_own_share(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running(live_settings(data)) as srv:
        admin = httpx.AsyncClient(
            base_url=srv.url,
            headers={"Authorization": f"Bearer {srv.platform.new_admin_key}"},
            timeout=60,
        )
        async with admin:
            for org in ("org-a", "org-b"):
                assert (await admin.post("/v1/orgs", json={"name": org})).status_code == 201
            worker = await admin.post(
                "/v1/orgs/org-b/agents", json={"name": "w", "role": "worker", "wait": True}
            )
            assert worker.status_code == 201, worker.text
            flooder = await admin.post(
                "/v1/orgs/org-a/agents",
                json={
                    "name": "flood",
                    "role": "flood",
                    "command": [sys.executable, "-c", FLOODER.read_text(), str(FLOOD_SECONDS)],
                },
            )
            assert flooder.status_code == 201, flooder.text
            report = (
                (data / "agents" / "orgs" / "org-a" / "agents" / flooder.json()["id"])
                / "workspace"
                / "flood.json"
            )
            # B works while A floods: tasks one after another until A's flood is over
            completed_during = 0
            started = time.monotonic()
            while not report.exists():
                t = await _finished(admin, "org-b", await _task(admin, "org-b", "worker"))
                assert t["state"] == "completed", t
                completed_during += 1
                assert time.monotonic() - started < 180, "the flood never ended"
            seen = json.loads(report.read_text())
            assert completed_during >= 3, completed_during
            assert seen["sent"] > 0
            assert seen["refused"] > 0, seen  # A was told: its share is full
            assert seen["firstRefusal"], seen
            b = (await admin.get(f"/v1/orgs/org-b/agents/{worker.json()['id']}")).json()
            assert b["restarts"] == 0 and b["state"] == "running", b  # heartbeats kept
            # A's own ordinary work goes on once the flood is over
            a_worker = await admin.post(
                "/v1/orgs/org-a/agents", json={"name": "w", "role": "worker", "wait": True}
            )
            assert a_worker.status_code == 201, a_worker.text
            t = await _finished(admin, "org-a", await _task(admin, "org-a", "worker"))
            assert t["state"] == "completed", t
    # and after a restart of the control plane, both orgs work
    async with running(live_settings(data)) as srv:
        key = (data / "admin.key").read_text().strip()
        admin = httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        async with admin:
            for org in ("org-a", "org-b"):
                t = await _finished(admin, org, await _task(admin, org, "worker"))
                assert t["state"] == "completed", (org, t)
