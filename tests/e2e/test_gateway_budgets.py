"""Budgets beyond one call, end to end with real agents and the stand-in upstream: an org whose
period budget is spent has its queued tasks wait with that reason until the budget is raised
or the period rolls over; a role's budget holds its agents' calls, also when they come at
once; and the console's org page shows what was spent per role and model and what is left."""

from __future__ import annotations

import html
import secrets
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Live
from tests.e2e.test_gateway import LLM_AGENT, _audit, _llm_agent, _model, _results, _run, _usage
from tests.support import eventually
from tests.upstream import StandIn, serving

pytestmark = pytest.mark.slow


@pytest.fixture
async def upstream() -> AsyncIterator[StandIn]:
    async with serving(StandIn(key=f"sk-provider-{secrets.token_hex(16)}")) as stand_in:
        yield stand_in


async def _shown(live: Live, org: str, task_id: str) -> dict[str, Any]:
    r = await live.admin.get(f"/v1/orgs/{org}/tasks/{task_id}")
    assert r.status_code == 200, r.text
    shown: dict[str, Any] = r.json()
    return shown


async def _waits_for_the_budget(live: Live, org: str, task_id: str) -> dict[str, Any]:
    async def waiting() -> dict[str, Any] | None:
        shown = await _shown(live, org, task_id)
        assert shown["state"] == "queued", shown
        return shown if "model budget is spent" in (shown["waiting"] or "") else None

    return await eventually(waiting, timeout=30, message=f"task {task_id} waits for the budget")


async def _set_budget(live: Live, org: str, tokens: int) -> None:
    r = await live.admin.put(f"/v1/orgs/{org}/budget", json={"tokens": tokens})
    assert r.status_code == 200, r.text


async def test_an_org_over_its_budget_has_its_tasks_wait_until_raised_or_the_period_ends(
    live: Live, upstream: StandIn
) -> None:
    await live.org("acme")
    await _model(live, "acme", upstream)
    agent = await _llm_agent(live, "acme")
    await _run(live, "acme", agent, model="small", calls=2)  # 24 tokens spent

    await _set_budget(live, "acme", 20)  # below what was spent: the org is held back
    task = await live.task("acme", agent=agent["id"], payload={"model": "small"})
    shown = await _waits_for_the_budget(live, "acme", task["id"])
    assert "organization" in shown["waiting"] and "24 of 20 tokens used" in shown["waiting"]
    usage = await _usage(live.admin, "acme")
    assert "model budget is spent" in usage["heldBack"]
    assert usage["left"] == {"tokens": 0, "cost": None}
    assert upstream.received and len(upstream.received) == 2  # nothing went out meanwhile

    await _set_budget(live, "acme", 10_000)  # raised: the task starts
    done = await live.wait_task("acme", task["id"], timeout=60)
    assert done["state"] == "completed" and _results(done)[0]["ok"], done
    assert (await _usage(live.admin, "acme"))["heldBack"] is None

    await _set_budget(live, "acme", 20)
    later = await live.task("acme", agent=agent["id"], payload={"model": "small"})
    await _waits_for_the_budget(live, "acme", later["id"])
    now = datetime.now(UTC)
    next_month = (now.replace(day=1) + timedelta(days=32)).replace(day=1)
    live.platform.models.meter.clock = lambda: next_month + (datetime.now(UTC) - now)
    done = await live.wait_task("acme", later["id"], timeout=60)  # a new period: it starts
    assert done["state"] == "completed", done
    refused = _results(done)[0]  # 20 tokens cannot hold a call's bound: refused before it went
    assert refused["status"] == 402 and refused["code"] == "budget_exceeded", refused
    assert len(upstream.received) == 3
    budget_changes = [e for e in await _audit(live.admin, "acme") if e["action"] == "model.budget"]
    assert len(budget_changes) == 3


async def test_a_role_budget_holds_its_agents_calls_also_when_they_come_at_once(
    live: Live, upstream: StandIn
) -> None:
    upstream.completion_tokens = 10**6  # every call uses all the max_tokens it may
    await live.org("acme")
    await _model(live, "acme", upstream)
    writer = {"name": "writer", "command": [sys.executable, str(LLM_AGENT)], "maxAgents": 1}
    await live.roles("acme", {**writer, "budget": {"tokens": 1000}})
    r = await live.admin.get("/v1/orgs/acme/roles/writer")
    assert r.json()["budget"] == {"tokens": 1000, "cost": None}
    version = r.json()["version"]

    task = await live.task(
        "acme",
        role="writer",
        payload={"model": "small", "calls": 20, "concurrent": True, "maxTokens": 150},
    )
    done = await live.wait_task("acme", task["id"], timeout=90)
    assert done["state"] == "completed", done
    results = _results(done)
    admitted = [r for r in results if r["ok"]]
    refused = [r for r in results if not r["ok"]]
    assert admitted and refused
    assert {r["code"] for r in refused} == {"budget_exceeded"}
    assert all("role writer's" in r["details"] for r in refused)

    usage = await _usage(live.admin, "acme")
    [row] = usage["byRole"]
    spent = 157 * len(admitted)
    assert row["role"] == "writer" and row["tokensIn"] + row["tokensOut"] == spent <= 1000
    assert row["budget"] == {"tokens": 1000, "cost": None}
    assert row["left"] == {"tokens": 1000 - spent, "cost": None}

    # raising the role's budget is in force at once and rolls out no agent
    body = {k: v for k, v in writer.items() if k != "name"}
    r = await live.admin.put(
        "/v1/orgs/acme/roles/writer", json={**body, "budget": {"tokens": 100_000}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["change"]["changes"]["budget"]["to"] == {"tokens": 100_000, "cost": None}
    assert r.json()["role"]["version"] == version
    again = await live.task("acme", role="writer", payload={"model": "small", "calls": 2})
    done = await live.wait_task("acme", again["id"], timeout=60)
    assert all(r["ok"] for r in _results(done)), done

    audit = await _audit(live.admin, "acme")
    targets = [e["target"] for e in audit if e["action"] == "model.budget"]
    assert targets.count("role:writer") == 2
    refusals = [e for e in audit if e["action"] == "model.call" and not e["allowed"]]
    assert len(refusals) == len(refused)


async def test_the_console_shows_spending_per_role_and_model_and_what_is_left(
    live: Live, upstream: StandIn
) -> None:
    await live.org("acme")
    await _model(live, "acme", upstream)
    writer = {"name": "writer", "command": [sys.executable, str(LLM_AGENT)]}
    await live.roles(
        "acme",
        {**writer, "budget": {"tokens": 500, "cost": "1"}},
        {"name": "idle", "budget": {"tokens": 9}},
    )
    await _set_budget(live, "acme", 1000)
    task = await live.task("acme", role="writer", payload={"model": "small", "calls": 2})
    assert (await live.wait_task("acme", task["id"], timeout=60))["state"] == "completed"

    async with httpx.AsyncClient(base_url=live.server.url, timeout=30) as console:
        r = await console.post("/login", data={"key": live.platform.new_admin_key})
        assert r.status_code == 303, r.text
        page: str = await eventually(lambda: _org_page(console))
    text = html.unescape(page)
    assert 'id="model-spending"' in page
    assert "1000 tokens (976 left)" in text  # the org's budget and what is left
    assert 'data-role="writer"' in page and "500 tokens (476 left)" in text
    assert "$1 ($0.999892 left)" in text  # 14 x $2/Mtok + 10 x $8/Mtok spent
    assert 'data-role="idle"' in page and "9 tokens (9 left)" in text  # no calls yet
    assert 'data-model="small"' in page
    assert 'id="held-back"' not in page

    await _set_budget(live, "acme", 10)
    async with httpx.AsyncClient(base_url=live.server.url, timeout=30) as console:
        await console.post("/login", data={"key": live.platform.new_admin_key})
        page = (await console.get("/orgs/acme")).text
    assert 'id="held-back"' in page and "model budget is spent" in html.unescape(page)


async def _org_page(console: httpx.AsyncClient) -> str | None:
    r = await console.get("/orgs/acme")
    assert r.status_code == 200, r.text
    return r.text if 'data-model="small"' in r.text else None
