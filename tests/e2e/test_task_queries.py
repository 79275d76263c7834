"""Idle agents pausing by themselves, idempotent submits, the task list a page at a time, and
why a task waits — on a live platform."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.api.server import running
from corral.domain.tasks import Priority, Requirements
from tests.e2e.conftest import Live, live_settings
from tests.support import eventually

AGENT = [sys.executable, str(Path(__file__).with_name("lifecycle_agent.py"))]


@pytest.fixture
async def quick_idle(tmp_path: Path) -> AsyncIterator[Live]:
    """A platform whose agents pause after 2 s without a task."""
    data = tmp_path / "data"
    async with running(live_settings(data, idle_timeout=2.0)) as srv:
        headers = {"Authorization": f"Bearer {srv.platform.new_admin_key}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as admin:
            yield Live(srv, admin, data)


@pytest.fixture
async def manual(tmp_path: Path) -> AsyncIterator[Live]:
    """A platform that never provisions on its own."""
    data = tmp_path / "data"
    async with running(live_settings(data, auto_provision=False)) as srv:
        headers = {"Authorization": f"Bearer {srv.platform.new_admin_key}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as admin:
            yield Live(srv, admin, data)


async def _agent(live: Live, org: str, agent_id: str) -> dict[str, Any]:
    agent: dict[str, Any] = (await live.admin.get(f"/v1/orgs/{org}/agents/{agent_id}")).json()
    return agent


async def test_an_idle_agent_pauses_by_itself_and_a_task_wakes_it(quick_idle: Live) -> None:
    live = quick_idle
    await live.org("acme")
    a = await live.agent("acme", "w", role="worker")
    busy = await live.task("acme", agent=a["id"], payload={"op": "sleep", "seconds": 4})
    # busy for 4 s, twice the idle timeout, while heartbeating: not paused under its task
    done_busy = await live.wait_task("acme", busy["id"], timeout=30)
    assert done_busy["state"] == "completed"
    finished = datetime.fromisoformat(done_busy["history"][-1]["at"])
    paused_at = (await _agent(live, "acme", a["id"]))["pausedAt"]
    # paused, if at all yet, only after the task: a loaded machine may take 2 s to look
    assert paused_at is None or datetime.fromisoformat(paused_at) >= finished, paused_at

    async def paused() -> bool:
        state: str = (await _agent(live, "acme", a["id"]))["state"]
        return state == "paused"

    await eventually(paused, timeout=30, message="paused after 2 s without a task")
    t = await live.task("acme", role="worker", payload={"op": "echo"})
    done = await live.wait_task("acme", t["id"], timeout=40)
    agents = (await live.admin.get("/v1/orgs/acme/agents")).json()["agents"]
    assert done["state"] == "completed" and done["assignedAgent"] == a["id"], (
        done["history"],
        [(x["id"], x["state"], x["pausedAt"], x["resumedAt"], x["detail"]) for x in agents],
    )
    history = [h["to"] for h in done["history"]]
    assert history[:2] == ["queued", "dispatched"]


async def test_the_same_idempotency_key_returns_the_same_task(manual: Live) -> None:
    await manual.org("acme")
    body = {"role": "worker", "payload": {"n": 1}, "idempotencyKey": "order-42"}
    first = await manual.task("acme", **body)
    again = await manual.task("acme", **body)
    assert again["id"] == first["id"] and again["idempotencyKey"] == "order-42"
    other = await manual.task("acme", **{**body, "idempotencyKey": "order-43"})
    assert other["id"] != first["id"]
    listed = (await manual.admin.get("/v1/orgs/acme/tasks")).json()["tasks"]
    assert sorted(t["id"] for t in listed) == sorted([first["id"], other["id"]])


async def test_600_tasks_are_listed_newest_first_over_pages(manual: Live) -> None:
    org, _ = await manual.org("acme")
    platform = manual.platform
    orgobj = await platform.orgs.get("acme")
    ids = []
    for i in range(600):
        rec = await platform.dispatcher.submit(
            orgobj,
            role="worker" if i % 2 else "writer",
            agent=None,
            priority=Priority.HIGH if i % 3 == 0 else Priority.NORMAL,
            deadline=None,
            requirements=Requirements(),
            payload={"i": i},
        )
        ids.append(rec.id)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 100, "state": "running,queued,dispatched"}
        if cursor:
            params["cursor"] = cursor
        r = await manual.admin.get("/v1/orgs/acme/tasks", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [t["id"] for t in page["tasks"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == 6 and seen == list(reversed(ids))
    r = await manual.admin.get(
        "/v1/orgs/acme/tasks", params={"role": "worker", "priority": "high", "limit": 1000}
    )
    expected = [ids[i] for i in range(600) if i % 2 and i % 3 == 0]
    assert [t["id"] for t in r.json()["tasks"]] == list(reversed(expected))
    r = await manual.admin.get("/v1/orgs/acme/tasks", params={"state": "queued,bogus"})
    assert r.status_code == 422 and "bogus" in r.json()["error"]["message"]
    r = await manual.admin.get("/v1/orgs/acme/tasks", params={"cursor": "nonsense"})
    assert r.status_code == 422


async def test_a_waiting_task_says_why(live: Live) -> None:
    await live.org("tiny", plan="free")  # two agents at most
    await live.agent("tiny", "a", role="other")
    await live.agent("tiny", "b", role="other")
    await live.roles("tiny", {"name": "worker"})  # declared: only the quota holds it back
    t = await live.task("tiny", role="worker", payload={"op": "echo"})

    async def why() -> str | None:
        shown = (await live.admin.get(f"/v1/orgs/tiny/tasks/{t['id']}")).json()
        waiting: str | None = shown["waiting"]
        return waiting

    reason = await eventually(why, timeout=20, message="a reason is given")
    assert "no agent of role 'worker'" in reason and "quota agents 2/2" in reason


async def test_a_task_for_a_paused_agent_says_it_is_waking(manual: Live) -> None:
    await manual.org("acme")
    a = await manual.agent("acme", "w", role="worker", command=AGENT)
    r = await manual.admin.post(f"/v1/orgs/acme/agents/{a['id']}/pause")
    assert r.status_code == 200
    (checkpoint,) = (manual.data_dir / "agents").rglob(".corral-checkpoint.json")
    hold = checkpoint.parent / "hold"  # its workspace: it waits there before it is ready
    hold.write_text("")
    t = await manual.task("acme", agent=a["id"], payload={"op": "echo"})

    async def why() -> str | None:
        shown = (await manual.admin.get(f"/v1/orgs/acme/tasks/{t['id']}")).json()
        waiting: str | None = shown["waiting"]
        return waiting

    assert await eventually(why, timeout=20) == f"agent {a['id']} is waking from a pause"
    hold.unlink()
    assert (await manual.wait_task("acme", t["id"], timeout=40))["state"] == "completed"
