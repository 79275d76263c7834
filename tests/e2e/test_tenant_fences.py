"""Fences on what one tenant's agents and clients can pile onto the platform: delegations
at its plan's rate, and a bounded number of waiting tasks."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.api.server import running
from corral.domain import plans
from tests.e2e.conftest import Live, live_settings

AGENT = [sys.executable, str(Path(__file__).with_name("lifecycle_agent.py"))]


@pytest.fixture
async def quiet(tmp_path: Path) -> AsyncIterator[Live]:
    """A platform that provisions nothing on its own (children of a role nobody serves
    wait), with a plan allowing only a few waiting tasks."""
    plans.register(plans.plan_from_wire({"name": "tiny-queue", "maxQueuedTasks": 5}))
    data = tmp_path / "data"
    async with (
        running(live_settings(data, auto_provision=False)) as srv,
        httpx.AsyncClient(
            base_url=srv.url,
            headers={"Authorization": f"Bearer {srv.platform.new_admin_key}"},
            timeout=60,
        ) as admin,
    ):
        yield Live(srv, admin, data)


async def test_an_orgs_waiting_tasks_are_bounded_by_its_plan(quiet: Live) -> None:
    await quiet.org("small", plan="tiny-queue")
    await quiet.org("other", plan="tiny-queue")
    for _ in range(5):
        await quiet.task("small", role="nobody", payload={})
    r = await quiet.admin.post("/v1/orgs/small/tasks", json={"role": "nobody", "payload": {}})
    assert r.status_code == 409, r.text
    body = r.json()["error"]
    assert body["code"] == "quota_exceeded" and "5 tasks waiting" in body["message"]
    assert body["details"]["limit"] == 5
    await quiet.task("other", role="nobody", payload={})  # another org's room is its own


async def test_a_batch_that_does_not_fit_the_orgs_queue_is_refused_whole(quiet: Live) -> None:
    await quiet.org("small", plan="tiny-queue")
    three = {"tasks": [{"role": "nobody"}] * 3}
    r = await quiet.admin.post("/v1/orgs/small/tasks/batch", json={"tasks": [{"role": "x"}] * 6})
    assert r.status_code == 409, r.text
    assert (await quiet.admin.post("/v1/orgs/small/tasks/batch", json=three)).status_code == 201
    r = await quiet.admin.post("/v1/orgs/small/tasks/batch", json=three)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert "3 tasks waiting and 3 more were submitted" in error["message"], error
    assert error["details"] == {"waiting": 3, "submitted": 3, "limit": 5}
    listed = (await quiet.admin.get("/v1/orgs/small/tasks")).json()["tasks"]
    assert len(listed) == 3  # nothing of the refused batches was accepted
    two = {"tasks": [{"role": "nobody"}] * 2}
    assert (await quiet.admin.post("/v1/orgs/small/tasks/batch", json=two)).status_code == 201


async def test_an_agent_flooding_delegations_is_held_to_its_plans_rate(quiet: Live) -> None:
    await quiet.org("flood", plan="free")
    _, _ = await quiet.org("calm", plan="free")
    a = await quiet.agent("flood", "a", role="odd", command=AGENT)
    calm = await quiet.agent("calm", "w", role="worker")
    plan = plans.get_plan("free")
    n = int(plan.api_burst * 10 * 3)
    t = await quiet.task(
        "flood", agent=a["id"], payload={"op": "flood-delegate", "n": n, "role": "x"}
    )
    done = await quiet.wait_task("flood", t["id"], timeout=120)
    assert done["state"] == "completed", done
    seen = done["result"]
    assert seen["refused"] > 0, seen  # told, through the SDK, as an exception
    assert "over the free plan's rate" in seen["firstRefusal"], seen
    assert seen["accepted"] < n, seen
    # the neighbour's work goes on
    ok = await quiet.task("calm", agent=calm["id"], payload={"op": "echo"})
    assert (await quiet.wait_task("calm", ok["id"]))["state"] == "completed"
