"""Priority, plan boost, fairness across tenants, retries and deadlines — with real agents."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from corral.api.server import running
from tests.e2e.conftest import Live, live_settings, the_agent
from tests.support import eventually


@pytest.fixture
async def manual(tmp_path: Path) -> AsyncIterator[Live]:
    """A platform that never provisions on its own: only the agents a test creates run."""
    data = tmp_path / "data"
    async with running(live_settings(data, auto_provision=False)) as srv:
        headers = {"Authorization": f"Bearer {srv.platform.new_admin_key}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as admin:
            yield Live(srv, admin, data)


def _at(task: dict[str, Any], state: str) -> datetime:
    (when,) = [h["at"] for h in task["history"] if h["to"] == state]
    return datetime.fromisoformat(when)


async def _show(live: Live, org: str, task_id: str) -> dict[str, Any]:
    task: dict[str, Any] = (await live.admin.get(f"/v1/orgs/{org}/tasks/{task_id}")).json()
    return task


async def test_one_busy_agent_runs_critical_high_normal_low(manual: Live) -> None:
    await manual.org("acme")
    await manual.agent("acme", "solo", role="worker")
    dispatcher = manual.platform.dispatcher
    dispatcher.hold()
    ids = {}
    for prio in ("low", "normal", "high", "critical"):
        t = await manual.task("acme", role="worker", priority=prio, payload={"op": "echo"})
        ids[prio] = t["id"]
    dispatcher.release()
    done = [await manual.wait_task("acme", i) for i in ids.values()]
    assert all(t["state"] == "completed" for t in done)
    shown = {p: await _show(manual, "acme", i) for p, i in ids.items()}
    order = sorted(shown, key=lambda p: _at(shown[p], "dispatched"))
    assert order == ["critical", "high", "normal", "low"]


async def test_enterprise_normal_runs_before_free_high(manual: Live) -> None:
    await manual.org("big", plan="enterprise")
    await manual.org("small", plan="free")
    await manual.agent("big", "b", role="worker")
    await manual.agent("small", "s", role="worker")
    dispatcher = manual.platform.dispatcher
    dispatcher.hold()
    free_high = await manual.task("small", role="worker", priority="high", payload={})
    ent_normal = await manual.task("big", role="worker", priority="normal", payload={})
    dispatcher.release()
    a = await manual.wait_task("big", ent_normal["id"])
    b = await manual.wait_task("small", free_high["id"])
    assert a["state"] == b["state"] == "completed"
    assert _at(await _show(manual, "big", a["id"]), "dispatched") < _at(
        await _show(manual, "small", b["id"]), "dispatched"
    )


async def test_a_full_org_does_not_delay_another_orgs_tasks(manual: Live) -> None:
    await manual.org("full", plan="free")
    await manual.org("other", plan="free")
    await manual.agent("full", "only", role="worker")
    await manual.agent("other", "w", role="worker")
    # "full" is busy for a long while with a queue behind it; its quota admits no new agent
    blocker = await manual.task("full", role="worker", payload={"op": "sleep", "seconds": 20})
    queued = [
        await manual.task("full", role="worker", priority="critical", payload={}) for _ in range(5)
    ]
    quick = await manual.task("other", role="worker", priority="low", payload={"op": "echo"})
    done = await manual.wait_task("other", quick["id"], timeout=10)
    assert done["state"] == "completed"
    for t in queued:
        assert (await _show(manual, "full", t["id"]))["state"] == "queued"
    await manual.admin.post(f"/v1/orgs/full/tasks/{blocker['id']}/cancel")


async def test_kill_9_of_an_agent_mid_task_retries_and_completes_once(manual: Live) -> None:
    await manual.org("acme")
    agent = await manual.agent("acme", "victim", role="worker")
    t = await manual.task("acme", role="worker", payload={"op": "sleep", "seconds": 1.5})

    async def running_now() -> bool:
        state: str = (await _show(manual, "acme", t["id"]))["state"]
        return state == "running"

    await eventually(running_now, message="task running")
    the_agent(agent["id"]).kill()
    done = await manual.wait_task("acme", t["id"], timeout=40)
    assert done["state"] == "completed"
    shown = await _show(manual, "acme", t["id"])
    assert shown["attempts"] == 2
    assert [h["to"] for h in shown["history"]].count("completed") == 1
    assert "queued" in [h["to"] for h in shown["history"][1:]]  # it went back to the queue


async def test_a_task_past_its_deadline_expires_undispatched(manual: Live) -> None:
    await manual.org("acme")
    t = await manual.task("acme", role="nobody", deadline="1s", payload={})
    done = await manual.wait_task("acme", t["id"], timeout=10)
    assert done["state"] == "expired"
    assert done["assignedAgent"] is None


async def test_bad_tasks_are_refused_at_the_api(manual: Live) -> None:
    await manual.org("acme")
    cases = [
        ({"payload": {}}, "exactly one of"),
        ({"role": "w", "agent": "x", "payload": {}}, "exactly one of"),
        ({"role": "w", "priority": "urgent", "payload": {}}, "unknown priority"),
        ({"role": "w", "deadline": "yesterday", "payload": {}}, "invalid deadline"),
        ({"role": "Bad Role", "payload": {}}, "DNS-1123"),
    ]
    for body, problem in cases:
        r = await manual.admin.post("/v1/orgs/acme/tasks", json=body)
        assert r.status_code == 422, (body, r.text)
        assert problem in r.json()["error"]["message"], r.text
    ghost = {"agent": "agent-acme-ghost-000000", "payload": {}}
    r = await manual.admin.post("/v1/orgs/acme/tasks", json=ghost)
    assert r.status_code == 404 and "unknown agent" in r.json()["error"]["message"], r.text
    r = await manual.admin.post(
        "/v1/orgs/acme/tasks",
        content=b'{"role": "w", "payload": [1]}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422


async def test_delegation_to_another_orgs_agent_is_refused(live: Live) -> None:
    await live.org("acme")
    await live.org("globex")
    mgr = await live.agent("acme", "mgr", role="manager")
    other = await live.agent("globex", "w", role="worker")
    t = await live.task(
        "acme",
        agent=mgr["id"],
        payload={"op": "delegate", "agent": other["id"], "payload": {"op": "echo"}},
    )
    done = await live.wait_task("acme", t["id"])
    assert done["state"] == "blocked"
    assert "delegation refused" in done["result"]["reason"]
    globex_tasks = (await live.admin.get("/v1/orgs/globex/tasks")).json()["tasks"]
    assert globex_tasks == []


async def test_delegation_within_an_org_creates_a_child_with_its_parent(live: Live) -> None:
    await live.org("acme")
    await live.roles("acme", {"name": "worker", "maxAgents": 2})  # the built-in agent
    mgr = await live.agent("acme", "mgr", role="manager")
    t = await live.task(
        "acme",
        agent=mgr["id"],
        payload={"op": "split", "text": "a b c\nd e\nf", "parts": 2, "role": "worker"},
    )
    done = await live.wait_task("acme", t["id"], timeout=40)
    assert done["state"] == "completed" and done["result"]["words"] == 6
    children = [
        c for c in (await live.admin.get("/v1/orgs/acme/tasks")).json()["tasks"] if c["parent"]
    ]
    assert len(children) == 2 and {c["parent"] for c in children} == {t["id"]}
    assert all(c["fromAgent"] == mgr["id"] and c["state"] == "completed" for c in children)


async def test_a_hung_agent_loses_its_heartbeat_and_its_task_is_retried(manual: Live) -> None:
    await manual.org("acme")
    agent = await manual.agent("acme", "sleepy", role="worker")
    t = await manual.task("acme", role="worker", payload={"op": "sleep", "seconds": 1})

    async def running_now() -> bool:
        state: str = (await _show(manual, "acme", t["id"]))["state"]
        return state == "running"

    await eventually(running_now, message="task running")
    proc = the_agent(agent["id"])
    proc.suspend()  # alive but silent: no heartbeat, no progress
    try:
        done = await manual.wait_task("acme", t["id"], timeout=40)
    finally:
        with contextlib.suppress(psutil.Error):
            proc.resume()
    assert done["state"] == "completed"
    shown = await _show(manual, "acme", t["id"])
    assert shown["attempts"] == 2
    assert any("lost" in h["detail"] for h in shown["history"])
    restarted = (await manual.admin.get(f"/v1/orgs/acme/agents/{agent['id']}")).json()
    # restarted once; the retried task it then completed ended its crash streak
    assert restarted["restarts"] == 0 and restarted["state"] == "running"
    assert "restarting after exit: heartbeat lost (1/3)" in restarted["detail"]


def _overlap(tasks: list[dict[str, Any]]) -> int:
    """The most tasks that were running at the same moment (from their histories)."""
    edges: list[tuple[datetime, int]] = []
    for t in tasks:
        edges.append((_at(t, "running"), 1))
        edges.append((_at(t, "completed"), -1))
    most = now = 0
    for _, step in sorted(edges):  # an end before a start at the same instant
        now += step
        most = max(most, now)
    return most


async def test_an_agent_with_three_slots_runs_three_tasks_at_once_and_never_four(
    manual: Live,
) -> None:
    await manual.org("acme")
    agent = await manual.agent("acme", "wide", role="worker", slots=3)
    assert agent["slots"] == 3
    dispatcher = manual.platform.dispatcher
    dispatcher.hold()  # all seven queued first, so that they compete for the three slots
    ids = [
        (await manual.task("acme", role="worker", payload={"op": "sleep", "seconds": 0.6}))["id"]
        for _ in range(7)
    ]
    dispatcher.release()
    for i in ids:
        assert (await manual.wait_task("acme", i))["state"] == "completed"
    shown = [await _show(manual, "acme", i) for i in ids]
    assert _overlap(shown) == 3


async def test_an_agent_with_one_slot_runs_one_task_at_a_time(manual: Live) -> None:
    await manual.org("acme")
    await manual.agent("acme", "narrow", role="worker")
    ids = [
        (await manual.task("acme", role="worker", payload={"op": "sleep", "seconds": 0.2}))["id"]
        for _ in range(3)
    ]
    for i in ids:
        assert (await manual.wait_task("acme", i))["state"] == "completed"
    assert _overlap([await _show(manual, "acme", i) for i in ids]) == 1


async def test_a_stream_of_quick_tasks_through_few_slots_all_complete_once(
    manual: Live,
) -> None:
    """A slot freed by one task's end is filled by the next while the agent's worker is still
    winding down: every task must still find a worker."""
    await manual.org("acme")
    await manual.agent("acme", "quick", role="worker", slots=2)
    platform = manual.platform
    org = await platform.orgs.get("acme")
    from corral.domain.tasks import Priority, Requirements

    ids = [
        (
            await platform.dispatcher.submit(
                org,
                role="worker",
                agent=None,
                priority=Priority.NORMAL,
                deadline=None,
                requirements=Requirements(),
                payload={"op": "echo"},
            )
        ).id
        for _ in range(400)
    ]

    async def all_done() -> bool:
        counts: dict[str, int] = {s: n for _, _, _, s, n in await platform.tasks.count_by_state()}
        return counts.get("completed", 0) == len(ids)

    await eventually(all_done, timeout=40, message="400 quick tasks completed")
    for i in ids[::40]:
        steps = [h["to"] for h in (await _show(manual, "acme", i))["history"]]
        assert steps == ["queued", "dispatched", "running", "completed"]


async def test_tasks_run_end_to_end_on_each_database(tmp_path: Path, database_url: str) -> None:
    """The journal's two writers (SQLite's own connection, the engine on PostgreSQL) carry a
    whole task's life, its history and its agent's current task."""
    settings = live_settings(tmp_path / "data", auto_provision=False, database_url=database_url)
    async with running(settings) as srv:
        headers = {"Authorization": f"Bearer {srv.platform.new_admin_key}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as admin:
            live = Live(srv, admin, tmp_path / "data")
            await live.org("acme")
            await live.agent("acme", "w", role="worker", slots=4)
            ids = [
                (await live.task("acme", role="worker", payload={"op": "echo", "n": i}))["id"]
                for i in range(20)
            ]
            done = [await live.wait_task("acme", i) for i in ids]
            assert [t["state"] for t in done] == ["completed"] * 20
            assert [t["result"]["echo"]["n"] for t in done] == list(range(20))
            shown = await _show(live, "acme", ids[0])
            assert [h["to"] for h in shown["history"]] == [
                "queued",
                "dispatched",
                "running",
                "completed",
            ]
            (agent,) = (await admin.get("/v1/orgs/acme/agents")).json()["agents"]
            assert agent["currentTask"] is None  # nothing in hand any more
