"""The secrets, grants and audit slice of the REST contract, tried the way a client would."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import httpx

from corral.control.platform import Platform
from tests.api.conftest import as_key


async def _org(admin: httpx.AsyncClient, name: str) -> tuple[str, str]:
    """Create an org; return its API key and that key's id."""
    r = await admin.post("/v1/orgs", json={"name": name})
    assert r.status_code == 201, r.text
    key = r.json()["apiKey"]
    return key, key.split("_")[1]


def _value() -> str:
    return f"ghp_{secrets.token_hex(20)}"


def _assert_no_value(response: httpx.Response, *values: str) -> None:
    for value in values:
        assert value not in response.text
        assert base64.b64encode(value.encode()).decode() not in response.text


async def test_put_list_show_delete_never_answer_the_value(admin: httpx.AsyncClient) -> None:
    key, key_id = await _org(admin, "acme")
    org = as_key(admin, key)
    first, second = _value(), _value()

    r = await org.put("/v1/orgs/acme/secrets/github-token", json={"value": first})
    assert r.status_code == 201, r.text
    assert set(r.json()) == {"name", "version", "createdAt", "updatedAt"}
    assert r.json()["name"] == "github-token" and r.json()["version"] == 1
    _assert_no_value(r, first)

    binary = base64.b64encode(second.encode()).decode()
    r = await org.put("/v1/orgs/acme/secrets/github-token", json={"valueBase64": binary})
    assert r.status_code == 200 and r.json()["version"] == 2
    await org.put("/v1/orgs/acme/secrets/agent-ssh-prod", json={"value": _value()})

    listed = await org.get("/v1/orgs/acme/secrets")
    assert [(s["name"], s["version"]) for s in listed.json()["secrets"]] == [
        ("agent-ssh-prod", 1),
        ("github-token", 2),
    ]
    shown = await org.get("/v1/orgs/acme/secrets/github-token")
    assert shown.json()["version"] == 2 and "value" not in shown.json()
    for response in (listed, shown):
        _assert_no_value(response, first, second)

    assert (await org.delete("/v1/orgs/acme/secrets/github-token")).status_code == 204
    assert (await org.get("/v1/orgs/acme/secrets/github-token")).status_code == 404
    assert (await org.delete("/v1/orgs/acme/secrets/github-token")).status_code == 404

    entries = (await org.get("/v1/orgs/acme/audit")).json()["entries"]
    writes = [
        (e["action"], e["target"], e["actor"]) for e in entries if e["action"] != "key.create"
    ]
    assert writes == [
        ("secret.delete", "github-token", f"key:{key_id}"),
        ("secret.put", "agent-ssh-prod", f"key:{key_id}"),
        ("secret.put", "github-token", f"key:{key_id}"),
        ("secret.put", "github-token", f"key:{key_id}"),
    ]
    assert all(first not in e["detail"] and second not in e["detail"] for e in entries)


async def test_bad_secret_input_is_422_naming_the_problem_without_the_value(
    admin: httpx.AsyncClient,
) -> None:
    await _org(admin, "acme")
    value = _value()
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("Bad_Name", {"value": value}, "DNS-1123"),
        ("github-token", {}, "exactly one of 'value' or 'valueBase64'"),
        ("github-token", {"value": value, "valueBase64": "YQ=="}, "exactly one of"),
        ("github-token", {"valueBase64": value + "!"}, "valueBase64 is not valid base64"),
        ("github-token", {"value": value * 2000}, "at most 65536 bytes"),
        ("github-token", {"value": 5}, "value"),
        ("github-token", {"value": value, "extra": value}, "extra"),
    ]
    for name, body, problem in cases:
        r = await admin.put(f"/v1/orgs/acme/secrets/{name}", json=body)
        assert r.status_code == 422, (body.keys(), r.text[:200])
        assert r.json()["error"]["code"] == "invalid_input"
        assert problem in r.json()["error"]["message"], r.json()["error"]["message"]
        _assert_no_value(r, value)
    for content, problem in [
        (b"{", "JSON"),
        (b'{"value": "\\ud800"}', "not valid Unicode"),
        (b"[]", "body"),
    ]:
        r = await admin.put(
            "/v1/orgs/acme/secrets/x", content=content, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422, (content, r.text)
        assert problem in r.json()["error"]["message"], r.text
    assert (await admin.get("/v1/orgs/acme/secrets")).json()["secrets"] == []
    assert (await admin.get("/v1/orgs/acme/secrets/Bad_Name")).status_code == 422


async def test_grants_name_exactly_one_role_or_agent(
    admin: httpx.AsyncClient, platform: Platform
) -> None:
    key, key_id = await _org(admin, "acme")
    org = as_key(admin, key)

    r = await org.post("/v1/orgs/acme/grants", json={"secret": "agent-ssh-*", "role": "worker"})
    assert r.status_code == 201, r.text
    by_role = r.json()
    assert by_role["id"].startswith("grant_")
    assert (by_role["secret"], by_role["role"], by_role["agent"]) == ("agent-ssh-*", "worker", None)

    for body, problem in [
        ({"secret": "github-token"}, "exactly one of 'role' or 'agent'"),
        ({"secret": "github-token", "role": "a", "agent": "b"}, "exactly one of"),
        ({"secret": "Git Hub", "role": "worker"}, "grant pattern"),
        ({"secret": "github-token", "role": "Worker!"}, "grant role"),
        ({"role": "worker"}, "secret"),
    ]:
        r = await org.post("/v1/orgs/acme/grants", json=body)
        assert r.status_code == 422, (body, r.text)
        assert problem in r.json()["error"]["message"], r.json()["error"]["message"]
    nobody = {"secret": "github-token", "agent": "agent-acme-nobody-1"}
    r = await org.post("/v1/orgs/acme/grants", json=nobody)
    assert r.status_code == 404 and "no agent" in r.json()["error"]["message"], r.text

    listed = (await org.get("/v1/orgs/acme/grants")).json()["grants"]
    assert [g["id"] for g in listed] == [by_role["id"]]
    assert (await org.delete(f"/v1/orgs/acme/grants/{by_role['id']}")).status_code == 204
    assert (await org.delete(f"/v1/orgs/acme/grants/{by_role['id']}")).status_code == 404
    assert (await org.get("/v1/orgs/acme/grants")).json()["grants"] == []

    entries = (await admin.get("/v1/orgs/acme/audit")).json()["entries"]
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("grant.remove", f"key:{key_id}"),
        ("grant.add", f"key:{key_id}"),
    ]
    assert by_role["id"] in entries[0]["detail"]


async def test_audit_pages_newest_first_and_records_the_admin(admin: httpx.AsyncClient) -> None:
    await _org(admin, "acme")
    for i in range(5):
        await admin.put(f"/v1/orgs/acme/secrets/s{i}", json={"value": _value()})
    page = (await admin.get("/v1/orgs/acme/audit", params={"limit": 2})).json()
    assert [e["target"] for e in page["entries"]] == ["s4", "s3"]
    assert all(e["actor"] == "admin" and e["allowed"] for e in page["entries"])
    older = await admin.get("/v1/orgs/acme/audit", params={"limit": 2, "before": page["next"]})
    assert [e["target"] for e in older.json()["entries"]] == ["s2", "s1"]
    rest = (await admin.get("/v1/orgs/acme/audit", params={"before": page["next"]})).json()
    assert rest["next"] is None and rest["entries"][-1]["action"] == "key.create"
    for params in ({"limit": 0}, {"limit": 1001}, {"before": -1}, {"limit": "x"}):
        r = await admin.get("/v1/orgs/acme/audit", params=params)
        assert r.status_code == 422, params


async def test_an_org_key_sees_nothing_of_another_org(admin: httpx.AsyncClient) -> None:
    key_a, _ = await _org(admin, "alpha")
    await _org(admin, "bravo")
    value = _value()
    await admin.put("/v1/orgs/bravo/secrets/github-token", json={"value": value})
    grant = (
        await admin.post("/v1/orgs/bravo/grants", json={"secret": "github-token", "role": "w"})
    ).json()
    alpha = as_key(admin, key_a)
    for method, path, body in [
        ("GET", "/v1/orgs/bravo/secrets", None),
        ("GET", "/v1/orgs/bravo/secrets/github-token", None),
        ("PUT", "/v1/orgs/bravo/secrets/github-token", {"value": "mine"}),
        ("DELETE", "/v1/orgs/bravo/secrets/github-token", None),
        ("GET", "/v1/orgs/bravo/grants", None),
        ("POST", "/v1/orgs/bravo/grants", {"secret": "*", "role": "w"}),
        ("DELETE", f"/v1/orgs/bravo/grants/{grant['id']}", None),
        ("GET", "/v1/orgs/bravo/audit", None),
    ]:
        r = await alpha.request(method, path, json=body)
        assert r.status_code == 404, (method, path, r.status_code)
        assert r.json()["error"]["message"] == "organization 'bravo' not found"
    # nor through its own org: another org's grant id is not found there either
    r = await alpha.delete(f"/v1/orgs/alpha/grants/{grant['id']}")
    assert r.status_code == 404
    assert (await admin.get("/v1/orgs/bravo/secrets/github-token")).json()["version"] == 1
    assert len((await admin.get("/v1/orgs/bravo/grants")).json()["grants"]) == 1
    assert (await alpha.get("/v1/orgs/alpha/audit")).json()["entries"] == []
    assert (await admin.get("/v1/orgs/bravo/secrets")).status_code == 200
    assert (await _anonymous(admin).get("/v1/orgs/bravo/secrets")).status_code == 401


def _anonymous(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=client._transport, base_url="http://t")
