"""Roles over the REST API: a roles file applied whole (or not at all), dry runs, one role
put, shown, listed and deleted; against SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx

from corral.control.platform import Platform
from corral.domain.ids import OrgId
from corral.vault.grants import describe
from tests.api.conftest import as_key

ASSISTANT: dict[str, Any] = {
    "name": "assistant",
    "command": ["python", "/srv/agents/assistant.py"],
    "slots": 4,
    "resources": {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    },
    "minAgents": 0,
    "maxAgents": 5,
    "idleTimeout": "5m",
    "env": {"MODEL": "small"},
}
REVIEWER: dict[str, Any] = {"name": "reviewer", "maxAgents": 2, "secrets": ["github-token"]}


async def _org(admin: httpx.AsyncClient, name: str) -> httpx.AsyncClient:
    r = await admin.post("/v1/orgs", json={"name": name})
    assert r.status_code == 201, r.text
    return as_key(admin, r.json()["apiKey"])


async def test_a_roles_file_is_applied_idempotently_and_dry_runs_change_nothing(
    admin: httpx.AsyncClient, platform: Platform
) -> None:
    org = await _org(admin, "acme")
    doc = {"roles": [ASSISTANT, REVIEWER]}

    dry = await org.put("/v1/orgs/acme/roles", json=doc, params={"dryRun": "true"})
    assert dry.status_code == 200, dry.text
    assert [c["action"] for c in dry.json()["changes"]] == ["create", "create"]
    assert (await org.get("/v1/orgs/acme/roles")).json() == {"roles": []}

    first = await org.put("/v1/orgs/acme/roles", json=doc)
    assert [c["action"] for c in first.json()["changes"]] == ["create", "create"]
    again = await org.put("/v1/orgs/acme/roles", json=doc)
    assert [c["action"] for c in again.json()["changes"]] == ["unchanged", "unchanged"]

    listed = (await org.get("/v1/orgs/acme/roles")).json()["roles"]
    assert [(r["name"], r["version"]) for r in listed] == [("assistant", 1), ("reviewer", 1)]
    assert listed[0]["command"] == ASSISTANT["command"]
    assert listed[0]["idleTimeout"] == 300.0

    changed = {"roles": [{**ASSISTANT, "maxAgents": 8}]}
    dry = await org.put("/v1/orgs/acme/roles", json=changed, params={"dryRun": "true"})
    assert dry.json()["changes"] == [
        {"name": "assistant", "action": "update", "changes": {"maxAgents": {"from": 5, "to": 8}}}
    ]
    await org.put("/v1/orgs/acme/roles", json=changed)
    shown = (await org.get("/v1/orgs/acme/roles/assistant")).json()
    assert (shown["maxAgents"], shown["version"], shown["agents"]) == (8, 2, [])

    # what the role grants, the vault enforces: its agents may read github-token
    acme = await platform.orgs.get("acme")
    grants = await platform.vault.grants.list(OrgId(acme.id))
    assert [describe(g.grant) for g in grants] == ["get github-token to role reviewer"]


async def test_a_bad_role_in_a_file_leaves_every_role_as_it_was(admin: httpx.AsyncClient) -> None:
    org = await _org(admin, "acme")
    bad = {"roles": [ASSISTANT, {"name": "worker", "minAgents": 3, "maxAgents": 2}]}
    r = await org.put("/v1/orgs/acme/roles", json=bad)
    assert r.status_code == 409, r.text
    assert "minAgents 3 is above maxAgents 2" in r.json()["error"]["message"]
    assert (await org.get("/v1/orgs/acme/roles")).json() == {"roles": []}

    bad_env = {"roles": [{**ASSISTANT, "env": {"CORRAL_ORG": "other"}}]}
    r = await org.put("/v1/orgs/acme/roles", json=bad_env)
    assert r.status_code == 422, r.text
    assert "CORRAL_ORG" in r.text
    too_big = {"roles": [{**ASSISTANT, "resources": {"limits": {"cpu": "64"}}}]}
    r = await org.put("/v1/orgs/acme/roles", json=too_big)
    assert r.status_code == 409, r.text
    assert "limits.cpu" in r.json()["error"]["message"]
    assert (await org.get("/v1/orgs/acme/roles")).json() == {"roles": []}


async def test_one_role_is_put_shown_and_deleted_and_other_orgs_never_see_it(
    admin: httpx.AsyncClient,
) -> None:
    acme = await _org(admin, "acme")
    globex = await _org(admin, "globex")
    body = {k: v for k, v in ASSISTANT.items() if k != "name"}
    r = await acme.put("/v1/orgs/acme/roles/assistant", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["change"]["action"] == "create"
    assert r.json()["role"]["version"] == 1

    named = await acme.put("/v1/orgs/acme/roles/reviewer", json={**ASSISTANT})
    assert named.status_code == 422  # the name is the path's
    assert "name" in named.json()["error"]["message"]

    assert (await globex.get("/v1/orgs/acme/roles/assistant")).status_code in (403, 404)
    assert (await globex.get("/v1/orgs/globex/roles/assistant")).status_code == 404
    assert (await globex.get("/v1/orgs/globex/roles")).json() == {"roles": []}

    assert (await acme.delete("/v1/orgs/acme/roles/assistant")).status_code == 204
    assert (await acme.get("/v1/orgs/acme/roles/assistant")).status_code == 404
    assert (await acme.delete("/v1/orgs/acme/roles/assistant")).status_code == 404


async def test_roles_survive_a_restart_of_the_control_plane(
    admin: httpx.AsyncClient, platform: Platform
) -> None:
    org = await _org(admin, "acme")
    await org.put("/v1/orgs/acme/roles", json={"roles": [ASSISTANT]})
    await platform.roles.load()  # as on start: read back from the store
    acme = await platform.orgs.get("acme")
    role = platform.roles.role(acme.id, "assistant")
    assert role is not None
    assert (role.version, role.max_agents, dict(role.env)) == (1, 5, {"MODEL": "small"})


async def test_a_role_s_task_defaults_sit_under_what_its_submitter_says(
    admin: httpx.AsyncClient,
) -> None:
    org = await _org(admin, "acme")
    role = {"name": "tidy", "taskDefaults": {"retry": {"maxAttempts": 2}, "runTimeout": 30}}
    assert (await org.put("/v1/orgs/acme/roles", json={"roles": [role]})).status_code == 200

    plain = await org.post("/v1/orgs/acme/tasks", json={"role": "tidy", "payload": {}})
    assert plain.status_code == 201, plain.text
    policy = plain.json()["policy"]
    assert (policy["retry"]["maxAttempts"], policy["runTimeout"]) == (2, 30.0)

    own = await org.post(
        "/v1/orgs/acme/tasks", json={"role": "tidy", "payload": {}, "runTimeout": 5}
    )
    policy = own.json()["policy"]
    assert (policy["retry"]["maxAttempts"], policy["runTimeout"]) == (2, 5.0)

    other = await org.post("/v1/orgs/acme/tasks", json={"role": "other", "payload": {}})
    assert other.json()["policy"]["retry"]["maxAttempts"] == 5  # the standard plan's


async def test_true_or_false_for_a_number_is_refused_naming_the_field(
    admin: httpx.AsyncClient,
) -> None:
    org = await _org(admin, "bools")
    for field in ("minAgents", "maxAgents", "slots"):
        r = await org.put("/v1/orgs/bools/roles/r?dryRun=true", json={field: False})
        assert r.status_code == 422, (field, r.text)
        assert f"{field} must be a number" in r.text
    r = await org.put("/v1/orgs/bools/roles/r", json={"idleTimeout": True})
    assert r.status_code == 422 and "idleTimeout must be a number" in r.text
    r = await org.post("/v1/orgs/bools/tasks", json={"role": "r", "maxTokens": True})
    assert r.status_code == 422 and "maxTokens must be a number" in r.text
    r = await org.put("/v1/orgs/bools/roles/r", json={"minAgents": 0, "onDemand": False})
    assert r.status_code == 200, r.text  # a boolean where one is asked for, and a number
    assert (await org.get("/v1/orgs/bools/roles/r")).json()["onDemand"] is False
