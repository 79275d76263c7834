"""``POST /v1/orgs/{org}/tasks/batch``: many tasks of one org in one request, all accepted or
none, each run once, and no way into another org."""

from __future__ import annotations

from typing import Any

from corral.client import AsyncClient
from tests.e2e.conftest import Live
from tests.support import eventually


async def _tasks_of(live: Live, org: str) -> list[dict[str, Any]]:
    r = await live.admin.get(f"/v1/orgs/{org}/tasks", params={"limit": 1000})
    assert r.status_code == 200, r.text
    tasks: list[dict[str, Any]] = r.json()["tasks"]
    return tasks


async def test_a_batch_is_accepted_in_order_and_every_task_runs_once(live: Live) -> None:
    _, acme = await live.org("acme")
    await live.agent("acme", "w", role="general")
    bodies = [{"role": "general", "payload": {"op": "echo", "n": n}} for n in range(300)]
    async with acme:
        r = await acme.post("/v1/orgs/acme/tasks/batch", json={"tasks": bodies})
    assert r.status_code == 201, r.text
    made = r.json()["tasks"]
    assert [t["payload"]["n"] for t in made] == list(range(300))
    assert len({t["id"] for t in made}) == 300 and {t["state"] for t in made} == {"queued"}

    async def all_done() -> list[dict[str, Any]] | None:
        tasks = await _tasks_of(live, "acme")
        return tasks if all(t["state"] == "completed" for t in tasks) else None

    done = await eventually(all_done, timeout=120, message="every task of the batch completed")
    assert sorted(t["id"] for t in done) == sorted(t["id"] for t in made)
    assert sorted(t["result"]["echo"]["n"] for t in done) == list(range(300))
    one = (await live.admin.get(f"/v1/orgs/acme/tasks/{made[7]['id']}")).json()
    assert [h["to"] for h in one["history"]].count("running") == 1  # run once


async def test_one_bad_task_refuses_the_whole_batch_and_names_it(live: Live) -> None:
    await live.org("acme")
    ok = {"role": "general", "payload": {"op": "echo"}}
    cases = [
        ({"role": "general", "agent": "agt_x", "payload": {}}, 422, "exactly one of"),
        ({"agent": "agt_nobody", "payload": {}}, 404, "unknown agent"),
        ({"role": "general", "deadline": "2001-01-01T00:00:00Z"}, 409, "already past"),
        ({"role": "general", "priority": "urgent"}, 422, "priority"),
    ]
    for bad, status, said in cases:
        r = await live.admin.post("/v1/orgs/acme/tasks/batch", json={"tasks": [ok, ok, bad, ok]})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["message"].startswith("item 2 of 4: ") and said in error["message"], error
        assert error["details"]["item"] == 2
        assert await _tasks_of(live, "acme") == []  # nothing of it was accepted
    for body, status in (({"tasks": []}, 422), ({"tasks": [ok] * 1001}, 422), ([ok], 422)):
        r = await live.admin.post("/v1/orgs/acme/tasks/batch", json=body)
        assert r.status_code == status, r.text


async def test_idempotency_keys_make_a_batch_safe_to_send_again(live: Live) -> None:
    await live.org("acme")
    bodies = [{"role": "nobody", "idempotencyKey": f"k{n}"} for n in range(5)]
    first = await live.admin.post("/v1/orgs/acme/tasks/batch", json={"tasks": bodies})
    assert first.status_code == 201, first.text
    # sent again with one more: the five known keys answer with their tasks, one is new
    more = [*bodies, {"role": "nobody", "idempotencyKey": "k5"}]
    again = await live.admin.post("/v1/orgs/acme/tasks/batch", json={"tasks": more})
    assert again.status_code == 201, again.text
    ids = [t["id"] for t in again.json()["tasks"]]
    assert ids[:5] == [t["id"] for t in first.json()["tasks"]]
    assert len(await _tasks_of(live, "acme")) == 6
    twice = [bodies[0], {"role": "nobody", "idempotencyKey": "k0"}]
    r = await live.admin.post("/v1/orgs/acme/tasks/batch", json={"tasks": twice})
    assert r.status_code == 422 and "same idempotency key" in r.text, r.text


async def test_an_org_key_cannot_submit_a_batch_into_another_org(live: Live) -> None:
    _, acme = await live.org("acme")
    await live.org("globex")
    async with acme:
        r = await acme.post("/v1/orgs/globex/tasks/batch", json={"tasks": [{"role": "general"}]})
        assert r.status_code == 404, r.text
        # a task of the batch naming another org's agent is unknown in this one
        other = await live.agent("globex", "w", role="general")
        r = await acme.post("/v1/orgs/acme/tasks/batch", json={"tasks": [{"agent": other["id"]}]})
        assert r.status_code == 404 and "unknown agent" in r.text, r.text
    assert await _tasks_of(live, "globex") == []
    assert await _tasks_of(live, "acme") == []


async def test_the_typed_client_submits_a_batch(live: Live) -> None:
    body, _ = await live.org("acme")
    async with AsyncClient(live.server.url, body["apiKey"]) as corral:
        made = await corral.submit_tasks(
            "acme", [{"role": "nobody", "payload": {"n": n}} for n in range(3)]
        )
    assert [t.payload for t in made] == [{"n": 0}, {"n": 1}, {"n": 2}]
