"""The org slice of the REST contract, tried the way a client would."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from corral.control.logs import JsonFormatter
from corral.control.platform import Platform
from tests.api.conftest import as_key


async def test_create_org_returns_namespace_and_a_key_once(admin: httpx.AsyncClient) -> None:
    r = await admin.post("/v1/orgs", json={"name": "acme", "plan": "standard"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["namespace"] == "org-acme"
    assert body["labels"] == {"tenant": "acme", "tier": "standard", "managed-by": "corral"}
    assert body["annotations"]["corral.dev/agent-limit"] == "10"
    assert body["apiKey"].startswith("crl_")
    shown = await admin.get("/v1/orgs/acme")
    assert "apiKey" not in shown.json()


async def test_usage_shows_the_seed_quota_with_zero_used(admin: httpx.AsyncClient) -> None:
    await admin.post("/v1/orgs", json={"name": "acme", "plan": "standard"})
    quota = (await admin.get("/v1/orgs/acme/usage")).json()["quota"]
    assert quota["requests.cpu"] == {"hard": "10", "used": "0"}
    assert quota["limits.memory"] == {"hard": "80Gi", "used": "0"}
    assert quota["pods"] == {"hard": "15", "used": "0"}


async def test_bad_name_and_bad_plan_are_422_naming_the_problem(admin: httpx.AsyncClient) -> None:
    r = await admin.post("/v1/orgs", json={"name": "Bad_Name!", "plan": "standard"})
    assert r.status_code == 422
    assert "DNS-1123" in r.json()["error"]["message"]
    r = await admin.post("/v1/orgs", json={"name": "acme", "plan": "nope"})
    assert r.status_code == 422
    assert "unknown plan 'nope'" in r.json()["error"]["message"]
    assert (await admin.get("/v1/orgs")).json()["orgs"] == []  # nothing half-created


async def test_malformed_bodies_never_answer_500(admin: httpx.AsyncClient) -> None:
    for content in (b"{", b"[]", b'{"name": 5}', b'{"name": "a", "extra": 1}', b"\xff"):
        r = await admin.post(
            "/v1/orgs", content=content, headers={"Content-Type": "application/json"}
        )
        assert r.status_code in (400, 422), (content, r.text)
        assert r.json()["error"]["code"] == "invalid_input"


async def test_oversized_body_is_refused(admin: httpx.AsyncClient) -> None:
    r = await admin.post("/v1/orgs", json={"name": "a" * 2_000_000})
    assert r.status_code == 413


async def test_duplicate_org_is_409(admin: httpx.AsyncClient) -> None:
    await admin.post("/v1/orgs", json={"name": "acme"})
    r = await admin.post("/v1/orgs", json={"name": "acme"})
    assert r.status_code == 409


async def test_an_org_key_sees_only_its_own_org(admin: httpx.AsyncClient) -> None:
    a = (await admin.post("/v1/orgs", json={"name": "acme"})).json()
    await admin.post("/v1/orgs", json={"name": "globex"})
    async with as_key(admin, a["apiKey"]) as acme:
        assert (await acme.get("/v1/orgs/acme")).status_code == 200
        other = await acme.get("/v1/orgs/globex")
        missing = await acme.get("/v1/orgs/nope")
        assert other.status_code == missing.status_code == 404
        assert other.json()["error"]["code"] == "not_found"
        assert (await acme.get("/v1/orgs/globex/usage")).status_code == 404
        assert [o["name"] for o in (await acme.get("/v1/orgs")).json()["orgs"]] == ["acme"]
        assert (await acme.post("/v1/orgs", json={"name": "evil"})).status_code == 403
        assert (await acme.delete("/v1/orgs/globex")).status_code == 403


async def test_missing_or_wrong_keys_are_401(admin: httpx.AsyncClient) -> None:
    async with as_key(admin, "crl_nope_nope") as bad:
        assert (await bad.get("/v1/orgs")).status_code == 401
    async with as_key(admin, "garbage") as bad:
        assert (await bad.get("/v1/orgs")).status_code == 401


async def test_each_org_is_rate_limited_by_its_plan(admin: httpx.AsyncClient) -> None:
    a = (await admin.post("/v1/orgs", json={"name": "tiny", "plan": "free"})).json()
    async with as_key(admin, a["apiKey"]) as tiny:
        responses = [await tiny.get("/v1/orgs/tiny/agents") for _ in range(40)]
        statuses = [r.status_code for r in responses]
        assert statuses[:20] == [200] * 20  # the free plan's burst
        limited = [r for r in responses if r.status_code == 429]
        assert limited, statuses
        assert int(limited[0].headers["Retry-After"]) >= 1
        assert limited[0].json()["error"]["code"] == "rate_limited"
    # the admin key is not limited by the org's plan
    assert (await admin.get("/v1/orgs/tiny/usage")).status_code == 200


async def test_set_plan_and_delete(admin: httpx.AsyncClient, platform: Platform) -> None:
    await admin.post("/v1/orgs", json={"name": "acme", "plan": "free"})
    r = await admin.patch("/v1/orgs/acme", json={"plan": "enterprise"})
    assert r.json()["plan"] == "enterprise"
    assert (await admin.patch("/v1/orgs/acme", json={"plan": "gold"})).status_code == 422
    assert (await admin.delete("/v1/orgs/acme")).status_code == 204
    assert (await admin.get("/v1/orgs/acme")).status_code == 404


async def test_plans_are_listed(admin: httpx.AsyncClient) -> None:
    names = [p["name"] for p in (await admin.get("/v1/plans")).json()["plans"]]
    # the three built in come first; an operator's plans (registered by a test that ran
    # earlier in this process) follow them
    assert names[:3] == ["free", "standard", "enterprise"]


async def test_orgs_are_listed_a_page_at_a_time(admin: httpx.AsyncClient) -> None:
    keys = {}
    for name in ("echo", "alpha", "delta", "bravo", "charlie"):
        keys[name] = (await admin.post("/v1/orgs", json={"name": name})).json()["apiKey"]
    seen, cursor, pages = [], None, 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = (await admin.get("/v1/orgs", params=params)).json()
        assert len(body["orgs"]) <= 2
        seen += [o["name"] for o in body["orgs"]]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert seen == ["alpha", "bravo", "charlie", "delta", "echo"] and pages == 3
    assert (await admin.get("/v1/orgs", params={"limit": 0})).status_code == 422
    async with as_key(admin, keys["delta"]) as delta:
        own = (await delta.get("/v1/orgs")).json()
    assert [o["name"] for o in own["orgs"]] == ["delta"] and own["nextCursor"] is None


async def test_the_access_log_of_a_task_submission_names_the_trace_it_joined(
    admin: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    assert (await admin.post("/v1/orgs", json={"name": "acme"})).status_code == 201
    declared = {"roles": [{"name": "worker", "maxAgents": 1, "onDemand": False}]}
    assert (await admin.put("/v1/orgs/acme/roles", json=declared)).status_code == 200
    caplog.set_level(logging.INFO, logger="corral.access")
    # the caller sends its span's traceparent, as any traced client does: the request joins
    # it whether or not the framework makes a request span of its own (it does once some
    # test has set a global tracer provider)
    with TracerProvider().get_tracer("test").start_as_current_span("caller") as caller:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        made = await admin.post(
            "/v1/orgs/acme/tasks", json={"role": "worker", "payload": {}}, headers=carrier
        )
    assert made.status_code == 201, made.text
    [line] = [r for r in caplog.records if r.getMessage().startswith("POST /v1/orgs/acme/tasks")]
    doc = json.loads(JsonFormatter().format(line))
    assert doc["trace_id"] == f"{caller.get_span_context().trace_id:032x}"
    assert doc["status"] == 201 and len(doc["span_id"]) == 16
    listed = await admin.get("/v1/orgs/acme/tasks")
    [plain] = [r for r in caplog.records if r.getMessage().startswith("GET /v1/orgs/acme/tasks")]
    assert listed.status_code == 200 and not hasattr(plain, "trace_id")


async def test_what_is_kept_of_an_org_and_its_key_follows_its_plan_change_and_delete(
    admin: httpx.AsyncClient,
) -> None:
    """Orgs and keys are kept in memory once read: a plan change and a delete still show at
    once, and a deleted org's key no longer opens anything, nor does a new org of its name."""
    a = (await admin.post("/v1/orgs", json={"name": "acme", "plan": "free"})).json()
    async with as_key(admin, a["apiKey"]) as acme:
        for _ in range(2):  # read twice: the second answer is the one kept
            assert (await acme.get("/v1/orgs/acme")).json()["plan"] == "free"
        assert (await admin.patch("/v1/orgs/acme", json={"plan": "standard"})).status_code == 200
        assert (await acme.get("/v1/orgs/acme")).json()["plan"] == "standard"
        assert (await admin.delete("/v1/orgs/acme")).status_code in (200, 204)
        assert (await acme.get("/v1/orgs/acme")).status_code in (401, 404)
        assert (await admin.get("/v1/orgs/acme")).status_code == 404
        again = await admin.post("/v1/orgs", json={"name": "acme", "plan": "free"})
        assert again.status_code == 201
        assert (await acme.get("/v1/orgs/acme")).status_code in (401, 404)
        assert (await admin.get("/v1/orgs/acme")).json()["id"] == again.json()["id"]
