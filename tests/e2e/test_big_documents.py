"""Payloads and results larger than one bus message travel through the org's object store,
with real agent processes and the platform's own nats-server: a 2 MB result completes and the
API returns it exactly, a 3 MB payload reaches the handler, a result over the plan's maximum
fails the task with the reason while the agent goes on, one org's agent cannot read or purge
another's objects, a restart still serves a stored result, and pruning deletes the objects."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.api.server import running
from corral.domain import objects
from corral.domain.errors import NotFound
from tests.e2e.conftest import Live, live_settings

AGENT = [sys.executable, str(Path(__file__).with_name("lifecycle_agent.py"))]
MiB = 1024 * 1024


async def _agent(live: Live, org: str, name: str = "w") -> dict[str, Any]:
    return await live.agent(org, name, role="odd", command=AGENT)


async def _stored(live: Live, org: str, task_id: str) -> dict[str, Any]:
    """The task as a list shows it: references are not read there."""
    r = await live.admin.get(f"/v1/orgs/{org}/tasks", params={"limit": 100})
    assert r.status_code == 200, r.text
    return next(t for t in r.json()["tasks"] if t["id"] == task_id)


async def test_a_2_mb_result_completes_and_the_api_returns_it_exactly(live: Live) -> None:
    await live.org("acme")  # standard: 1 MiB per bus message
    a = await _agent(live, "acme")
    t = await live.task("acme", agent=a["id"], payload={"op": "big", "bytes": 2_000_000})
    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["state"] == "completed", done
    assert done["result"] == {"blob": "x" * 2_000_000}
    ref = objects.reference_in((await _stored(live, "acme", t["id"]))["result"])
    assert ref is not None and ref.name == objects.result_name(t["id"], 1)
    assert ref.size == len(b'{"blob":""}') + 2_000_000
    shown = (await live.admin.get(f"/v1/orgs/acme/agents/{a['id']}")).json()
    assert shown["state"] == "running" and shown["restarts"] == 0


async def test_a_3_mb_payload_reaches_the_handler_through_the_object_store(live: Live) -> None:
    await live.org("acme")
    a = await _agent(live, "acme")
    blob = "y" * 3_000_000
    t = await live.task("acme", agent=a["id"], payload={"op": "echo", "blob": blob})
    assert objects.reference_in(t["payload"]) is not None  # what the bus carries
    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["state"] == "completed", done
    assert done["payload"] == {"op": "echo", "blob": blob}
    assert done["result"]["echo"]["blob"] == blob  # and back, as a result over the limit


async def test_a_result_over_the_plan_maximum_fails_and_the_agent_takes_the_next_task(
    live: Live,
) -> None:
    await live.org("tiny", plan="free")  # at most 8 MiB per payload or result
    a = await _agent(live, "tiny")
    t = await live.task("tiny", agent=a["id"], payload={"op": "big", "bytes": 9_000_000})
    done = await live.wait_task("tiny", t["id"], timeout=60)
    assert done["state"] == "failed" and done["attempts"] == 1, done  # not retried
    reason = done["result"]["reason"]
    assert "9000011 bytes" in reason and str(8 * MiB) in reason, reason
    assert done["result"]["errorType"] == "TooLarge"
    after = await live.task("tiny", agent=a["id"], payload={"op": "big", "bytes": 1_000_000})
    completed = await live.wait_task("tiny", after["id"], timeout=60)
    assert completed["state"] == "completed" and len(completed["result"]["blob"]) == 1_000_000
    shown = (await live.admin.get(f"/v1/orgs/tiny/agents/{a['id']}")).json()
    assert shown["state"] == "running" and shown["restarts"] == 0


async def test_a_payload_over_the_plan_maximum_is_refused_and_nothing_is_created(
    live: Live,
) -> None:
    await live.org("tiny", plan="free")
    body = {"role": "odd", "payload": {"blob": "z" * (9 * MiB)}}
    r = await live.admin.post("/v1/orgs/tiny/tasks", json=body)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "too_large"
    assert error["details"] == {"size": len('{"blob":""}') + 9 * MiB, "limit": 8 * MiB}
    assert "8 MiB" in error["message"]
    listed = (await live.admin.get("/v1/orgs/tiny/tasks")).json()
    assert listed["tasks"] == []


async def test_one_orgs_agent_can_neither_read_nor_purge_another_orgs_objects(
    live: Live,
) -> None:
    await live.org("acme")
    await live.org("globex")
    spy = await _agent(live, "acme", "spy")
    secret = {"role": "nobody", "payload": {"secret": "s" * 2_000_000}}
    r = await live.admin.post("/v1/orgs/globex/tasks", json=secret)
    assert r.status_code == 201, r.text
    theirs = r.json()
    ref = objects.reference_in(theirs["payload"])
    assert ref is not None
    t = await live.task("acme", agent=spy["id"], payload={"op": "peek", "ref": ref.to_wire()})
    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["state"] == "completed", done
    assert done["result"]["read"].startswith("NotFound"), done["result"]
    assert done["result"]["purge"].startswith("refused"), done["result"]
    # globex's object is whole, and its own task still shows it
    shown = (await live.admin.get(f"/v1/orgs/globex/tasks/{theirs['id']}")).json()
    assert shown["payload"] == secret["payload"]
    # the same agent reads its own org's objects (the peek above was not refused for nothing)
    own = await live.task("acme", role="nobody", payload={"mine": "m" * 2_000_000})
    own_ref = objects.reference_in(own["payload"])
    assert own_ref is not None
    t = await live.task("acme", agent=spy["id"], payload={"op": "peek", "ref": own_ref.to_wire()})
    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["result"]["read"] == f"read {own_ref.size} bytes", done["result"]
    assert done["result"]["purge"].startswith("refused"), done["result"]


async def test_a_restart_still_serves_a_stored_result(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running(live_settings(data)) as srv:
        key = srv.platform.new_admin_key
        async with httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as admin:
            live = Live(srv, admin, data)
            await live.org("acme")
            a = await _agent(live, "acme")
            t = await live.task("acme", agent=a["id"], payload={"op": "big", "bytes": 1_500_000})
            assert (await live.wait_task("acme", t["id"], timeout=60))["state"] == "completed"
    async with (
        running(live_settings(data)) as srv,
        httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as admin,
    ):
        shown = (await admin.get(f"/v1/orgs/acme/tasks/{t['id']}")).json()
    assert shown["state"] == "completed"
    assert shown["result"] == {"blob": "x" * 1_500_000}


async def test_pruning_a_task_deletes_its_objects(live: Live) -> None:
    await live.org("acme")
    a = await _agent(live, "acme")
    t = await live.task("acme", agent=a["id"], payload={"op": "echo", "blob": "q" * 2_000_000})
    assert (await live.wait_task("acme", t["id"], timeout=60))["state"] == "completed"
    stored = await _stored(live, "acme", t["id"])
    refs = [objects.reference_in(stored[k]) for k in ("payload", "result")]
    assert all(r is not None for r in refs)
    stores = live.platform.bus.objects
    for ref in refs:
        assert ref is not None
        assert len(await stores.get("acme", ref, limit=ref.size)) == ref.size
    pruned = await live.platform.retention.prune_once(now=datetime.now(UTC) + timedelta(days=30))
    assert pruned >= 1
    for ref in refs:
        assert ref is not None
        with pytest.raises(NotFound):
            await stores.get("acme", ref, limit=ref.size)


async def test_a_big_delegation_and_its_big_result_reach_both_handlers(live: Live) -> None:
    await live.org("acme")
    parent = await _agent(live, "acme", "mgr")
    await live.agent("acme", "kid", role="kid", command=AGENT)
    blob = "d" * 1_500_000  # over one bus message both ways
    t = await live.task(
        "acme",
        agent=parent["id"],
        payload={"op": "delegate", "role": "kid", "payload": {"op": "echo", "blob": blob}},
    )
    done = await live.wait_task("acme", t["id"], timeout=90)
    assert done["state"] == "completed", done
    assert done["result"]["echo"] == {"op": "echo", "blob": blob}
    r = await live.admin.get("/v1/orgs/acme/tasks", params={"parent": t["id"]})
    (child,) = r.json()["tasks"]
    assert objects.reference_in(child["payload"]) is not None  # it went by reference
    shown = (await live.admin.get(f"/v1/orgs/acme/tasks/{child['id']}")).json()
    assert shown["payload"] == {"op": "echo", "blob": blob}
