"""Finished tasks are pruned after their plan's retention; live ones never are; GET of a
pruned task says it may have been pruned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from corral.api.server import running
from corral.domain.ids import new_task_id, task_created_at
from corral.store.schema import TaskEventRow, TaskRow
from tests.e2e.conftest import Live, live_settings
from tests.support import eventually


def test_a_task_id_carries_the_second_it_was_made() -> None:
    made = new_task_id(now=1_800_000_000.7)
    assert made.startswith("task_") and len(made) == 31
    assert task_created_at(made) == 1_800_000_000.0
    assert task_created_at("task_0123456789abcdef") is None  # an older shape
    assert new_task_id() != new_task_id()


@pytest.fixture
async def short(tmp_path: Path) -> AsyncIterator[Live]:
    data = tmp_path / "data"
    settings = live_settings(data, task_retention=1.0, prune_interval=0.2, auto_provision=False)
    async with (
        running(settings) as srv,
        httpx.AsyncClient(
            base_url=srv.url,
            headers={"Authorization": f"Bearer {srv.platform.new_admin_key}"},
            timeout=30,
        ) as admin,
    ):
        yield Live(srv, admin, data)


async def test_finished_tasks_are_pruned_and_live_ones_kept(short: Live) -> None:
    await short.org("acme")
    await short.agent("acme", "w", role="worker")
    done = [
        await short.task("acme", role="worker", payload={"op": "echo", "n": n}) for n in range(5)
    ]
    waiting = await short.task("acme", role="nobody-serves-this", payload={})
    for t in done:
        assert (await short.wait_task("acme", t["id"]))["state"] == "completed"

    async def pruned() -> bool:
        r = await short.admin.get(f"/v1/orgs/acme/tasks/{done[-1]['id']}")
        return r.status_code == 404

    await eventually(pruned, timeout=60, message="the finished tasks pruned")
    for t in done:
        r = await short.admin.get(f"/v1/orgs/acme/tasks/{t['id']}")
        assert r.status_code == 404
        body = r.json()["error"]
        assert body["details"]["pruned"] is True and "pruned" in body["message"]
    kept = await short.admin.get(f"/v1/orgs/acme/tasks/{waiting['id']}")
    assert kept.status_code == 200 and kept.json()["state"] == "queued"
    listed = (await short.admin.get("/v1/orgs/acme/tasks")).json()["tasks"]
    assert [t["id"] for t in listed] == [waiting["id"]]
    db = short.platform.db
    async with db.sessions() as s:
        ids = [t["id"] for t in done]
        history = await s.execute(
            select(func.count()).select_from(TaskEventRow).where(TaskEventRow.task_id.in_(ids))
        )
        rows = await s.execute(select(func.count()).select_from(TaskRow))
    assert history.scalar_one() == 0
    assert rows.scalar_one() == 1
    metrics = await short.admin.get("/metrics")
    assert "corral_tasks_pruned_total 5.0" in metrics.text
    never = await short.admin.get("/v1/orgs/acme/tasks/task_0000000001ffffffffffffffffffffff")
    assert never.status_code == 404


async def _counts_agree(live: Live) -> list[tuple[str, str, str, str, int]]:
    """The task counts /metrics shows (kept by the dispatcher) are the store's own."""
    p = live.platform
    counts = p.dispatcher.book.counts

    async def loaded() -> bool:  # the finished tasks are counted in the background
        return bool(counts.loaded)

    await eventually(loaded, timeout=30, message="the finished tasks counted")
    assert sorted(counts.items()) == sorted(await p.tasks.count_by_org())  # an org's gone too
    kept = sorted(counts.rows(p.dispatcher.book.orgs))
    assert kept == sorted(await p.tasks.count_by_state())
    return kept


async def test_the_task_counts_follow_the_store_through_pruning_deletion_and_a_restart(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    settings = live_settings(data, task_retention=1.0, prune_interval=0.2, auto_provision=False)
    async with running(settings) as srv:
        headers = {"Authorization": f"Bearer {srv.platform.new_admin_key}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as admin:
            live = Live(srv, admin, data)
            for org in ("acme", "globex"):
                await live.org(org)
                await live.agent(org, "w", role="worker")
            ended = [
                (org, await live.task(org, role="worker", payload={"op": op}, priority=priority))
                for org in ("acme", "globex")
                for op, priority in (("echo", "high"), ("fail", "normal"), ("echo", "low"))
            ]
            for org, t in ended:
                await live.wait_task(org, t["id"])
            waiting = await live.task("acme", role="nobody", payload={}, idempotencyKey="k")
            again = await live.task("acme", role="nobody", payload={}, idempotencyKey="k")
            assert again["id"] == waiting["id"]  # no second task, none counted
            raced = await asyncio.gather(  # both pass the lookup; the store refuses one
                *(live.task("acme", role="nobody", payload={}, idempotencyKey="r") for _ in "ab")
            )
            assert raced[0]["id"] == raced[1]["id"]
            doomed = await live.task("globex", role="nobody", payload={})
            r = await admin.post(f"/v1/orgs/globex/tasks/{doomed['id']}/cancel")
            assert r.status_code == 200
            before = await _counts_agree(live)
            states = {(org, state) for org, _, _, state, _ in before}
            assert {("acme", "completed"), ("acme", "blocked"), ("acme", "queued")} <= states
            assert ("globex", "cancelled") in states

            async def pruned() -> bool:
                kept = await _counts_agree(live)
                return {(o, st) for o, _, _, st, _ in kept} == {("acme", "queued")}

            await eventually(pruned, timeout=60, message="the finished tasks pruned")
            await live.task("globex", role="nobody", payload={})
            r = await admin.delete("/v1/orgs/globex")
            assert r.status_code in (200, 202, 204), r.text

            async def deleted() -> bool:
                r = await admin.get("/v1/orgs/globex")
                return r.status_code == 404

            await eventually(deleted, timeout=60, message="globex deleted")
            assert await _counts_agree(live) == [("acme", "standard", "normal", "queued", 2)]
    async with running(settings) as srv:  # read once after the start, then kept
        headers = {"Authorization": f"Bearer {(data / 'admin.key').read_text().strip()}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as admin:
            live = Live(srv, admin, data)
            assert await _counts_agree(live) == [("acme", "standard", "normal", "queued", 2)]
            metrics = (await admin.get("/metrics")).text
            assert (
                'corral_tasks{org="acme",priority="normal",state="queued",tier="standard"} 2.0'
                in metrics
            )
