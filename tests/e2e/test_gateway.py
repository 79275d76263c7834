"""The model gateway end to end: real agent processes using the plain ``openai`` client reach
their org's models through the gateway, against a stand-in upstream speaking the provider
wire format; keys stay in the vault, orgs stay apart, budgets hold under concurrency, usage
adds up, and a paused agent's credential stops working."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from click.testing import CliRunner, Result

from corral.cli.main import cli
from tests.e2e.conftest import Live
from tests.support import eventually
from tests.upstream import StandIn, serving

pytestmark = pytest.mark.slow

LLM_AGENT = Path(__file__).parents[2] / "examples" / "llm_agent.py"
TEXT = "Hello from the stand-in model"


@pytest.fixture
async def upstream() -> AsyncIterator[StandIn]:
    async with serving(StandIn(key=f"sk-provider-{secrets.token_hex(16)}")) as stand_in:
        yield stand_in


async def _model(
    live: Live, org: str, upstream: StandIn, name: str = "small", **extra: Any
) -> dict[str, Any]:
    r = await live.admin.put(f"/v1/orgs/{org}/secrets/provider-key", json={"value": upstream.key})
    assert r.status_code in (200, 201), r.text
    body = {
        "baseUrl": upstream.url,
        "keySecret": "provider-key",
        "upstreamModel": "standin-1",
        "priceIn": "2",
        "priceOut": "8",
        **extra,
    }
    r = await live.admin.put(f"/v1/orgs/{org}/models/{name}", json=body)
    assert r.status_code in (200, 201), r.text
    model: dict[str, Any] = r.json()
    return model


async def _llm_agent(live: Live, org: str, name: str = "writer") -> dict[str, Any]:
    return await live.agent(org, name, role="writer", command=[sys.executable, str(LLM_AGENT)])


async def _run(live: Live, org: str, agent: dict[str, Any], **payload: Any) -> dict[str, Any]:
    task = await live.task(org, agent=agent["id"], payload=payload)
    done = await live.wait_task(org, task["id"])
    assert done["state"] == "completed", done
    return done


def _results(task: dict[str, Any]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = task["result"]["results"]
    return results


def _agent_env(agent_id: str) -> dict[str, str]:
    for proc in psutil.process_iter(["environ"]):
        try:
            env = proc.info["environ"] or {}
        except (psutil.Error, OSError):
            continue
        if env.get("CORRAL_AGENT_ID") == agent_id:
            return dict(env)
    raise AssertionError(f"no process of agent {agent_id}")


def _files_holding(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(str(path.relative_to(root)))
        except (FileNotFoundError, PermissionError):
            continue
    return found


async def _usage(client: httpx.AsyncClient, org: str) -> dict[str, Any]:
    r = await client.get(f"/v1/orgs/{org}/usage/models")
    assert r.status_code == 200, r.text
    usage: dict[str, Any] = r.json()
    return usage


async def _audit(client: httpx.AsyncClient, org: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/orgs/{org}/audit", params={"limit": 1000})
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()["entries"]
    return entries


async def test_an_agent_gets_completions_streams_and_embeddings_and_never_sees_the_key(
    live: Live, upstream: StandIn
) -> None:
    await live.org("acme")
    await _model(live, "acme", upstream)
    agent = await _llm_agent(live, "acme")

    chat = await _run(live, "acme", agent, model="small", calls=2)
    assert _results(chat) == [{"ok": True, "text": TEXT, "usage": 12}] * 2
    streamed = await _run(live, "acme", agent, model="small", stream=True)
    assert _results(streamed) == [{"ok": True, "text": TEXT, "usage": 12}]
    embedded = await _run(live, "acme", agent, model="small", embed=True)
    assert _results(embedded) == [{"ok": True, "dims": 3}]

    # the upstream got its own model name, the provider key, and was asked for stream usage
    assert {b["model"] for b in upstream.received} == {"standin-1"}
    assert upstream.keys_seen == {f"Bearer {upstream.key}"}
    assert any((b.get("stream_options") or {}).get("include_usage") for b in upstream.received)

    # the agent holds its own gateway credential, pointed at the gateway's own port
    env = _agent_env(agent["id"])
    assert env["OPENAI_BASE_URL"] == f"{live.server.gateway_url}/v1"
    assert env["OPENAI_BASE_URL"] != f"{live.server.url}/v1"
    assert env["OPENAI_API_KEY"].startswith("cgw_")
    assert not any(upstream.key in f"{k}={v}" for k, v in env.items())
    for proc in psutil.process_iter(["environ", "cmdline"]):
        try:
            if (proc.info["environ"] or {}).get("CORRAL_AGENT_ID") != agent["id"]:
                continue
            assert upstream.key not in " ".join(proc.info["cmdline"] or ())
        except (psutil.Error, OSError):
            continue
    assert _files_holding(live.data_dir / "agents", upstream.key.encode()) == []

    # usage adds up exactly: per task, per agent, per role, per model and for the org
    usage = await eventually(lambda: _usage(live.admin, "acme"))
    total = usage["total"]
    assert (total["calls"], total["tokensIn"], total["tokensOut"]) == (4, 28, 15)
    assert total["cost"] == "0.000176"  # 28 x $2/Mtok + 15 x $8/Mtok
    assert [(r["role"], r["tokensIn"] + r["tokensOut"]) for r in usage["byRole"]] == [
        ("writer", 43)
    ]
    assert [(r["agent"], r["calls"]) for r in usage["byAgent"]] == [(agent["id"], 4)]
    shown = (await live.admin.get(f"/v1/orgs/acme/tasks/{chat['id']}")).json()
    assert shown["modelUsage"]["tokens"] == 24
    assert shown["modelUsage"]["byModel"][0]["model"] == "small"
    whole = (await live.admin.get("/v1/orgs/acme/usage")).json()
    assert whole["models"]["total"]["tokens"] == 43

    metrics = (await live.admin.get("/metrics")).text
    assert 'corral_model_tokens_total{direction="in",model="small",org="acme"} 28.0' in metrics

    actions = [e["action"] for e in await _audit(live.admin, "acme")]
    assert "model.declare" in actions


async def test_an_agent_reaches_only_its_own_orgs_models_and_tasks(
    live: Live, upstream: StandIn
) -> None:
    await live.org("alpha")
    await live.org("bravo")
    await _model(live, "bravo", upstream, name="bravo-only")
    agent = await _llm_agent(live, "alpha")
    other = await _llm_agent(live, "bravo", name="other")

    refused = _results(await _run(live, "alpha", agent, model="bravo-only"))
    assert refused[0]["status"] == 404 and refused[0]["code"] == "model_not_found", refused

    token = _agent_env(agent["id"])["OPENAI_API_KEY"]
    bravo_task = await live.task("bravo", agent=other["id"], payload={"model": "none"})
    async with openai.AsyncOpenAI(
        base_url=f"{live.server.gateway_url}/v1", api_key=token, max_retries=0
    ) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == []
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(
                model="bravo-only",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Corral-Task": bravo_task["id"]},
            )
    async with openai.AsyncOpenAI(
        base_url=f"{live.server.gateway_url}/v1", api_key="cgw_forged", max_retries=0
    ) as forged:
        with pytest.raises(openai.AuthenticationError):
            await forged.models.list()

    assert upstream.received == []
    refusals = [e for e in await _audit(live.admin, "alpha") if e["action"] == "model.call"]
    assert refusals and not any(e["allowed"] for e in refusals)
    assert {e["target"] for e in refusals} == {"bravo-only"}


_HELD = re.compile(r"(\d+) of (\d+) used or held, this call may use up to (\d+)")


async def test_a_task_budget_admits_calls_up_to_it_and_refuses_the_next(
    live: Live, upstream: StandIn
) -> None:
    await live.org("acme")
    await _model(live, "acme", upstream)
    agent = await _llm_agent(live, "acme")
    budget = 500
    task = await live.task(
        "acme", agent=agent["id"], payload={"model": "small", "calls": 60}, maxTokens=budget
    )
    results = _results(await live.wait_task("acme", task["id"]))
    admitted = [r for r in results if r["ok"]]
    refused = [r for r in results if not r["ok"]]
    assert admitted and refused
    assert results[: len(admitted)] == admitted  # refusals only once the budget is near
    assert {r["status"] for r in refused} == {402}
    assert {r["code"] for r in refused} == {"budget_exceeded"}
    committed, limit, reservation = map(int, _HELD.search(refused[0]["details"]).groups())  # type: ignore[union-attr]
    assert limit == budget
    assert committed == 12 * len(admitted)
    assert committed + reservation > budget  # the refused call could have gone over
    assert committed - 12 + reservation <= budget  # the last admitted one could not
    shown = (await live.admin.get(f"/v1/orgs/acme/tasks/{task['id']}")).json()
    assert shown["modelUsage"]["tokens"] == committed <= budget
    assert shown["modelUsage"]["budget"] == {"tokens": budget, "cost": None}


async def test_twenty_concurrent_calls_never_overspend_the_org_budget(
    live: Live, upstream: StandIn
) -> None:
    upstream.completion_tokens = 10**6  # every call uses all the max_tokens it may
    await live.org("acme")
    await _model(live, "acme", upstream)
    agent = await _llm_agent(live, "acme")
    r = await live.admin.put("/v1/orgs/acme/budget", json={"tokens": 1000})
    assert r.status_code == 200, r.text
    assert r.json()["budget"] == {"tokens": 1000, "cost": None}

    done = await _run(live, "acme", agent, model="small", calls=20, concurrent=True, maxTokens=150)
    results = _results(done)
    admitted = [r for r in results if r["ok"]]
    assert admitted and len(admitted) < 20
    assert {r["code"] for r in results if not r["ok"]} == {"budget_exceeded"}
    usage = await _usage(live.admin, "acme")
    assert usage["total"]["tokens"] == 157 * len(admitted) <= 1000
    audit = await _audit(live.admin, "acme")
    assert any(e["action"] == "model.budget" for e in audit)
    assert sum(e["action"] == "model.call" and not e["allowed"] for e in audit) == 20 - len(
        admitted
    )


async def test_a_paused_agents_gateway_credential_is_refused(live: Live, upstream: StandIn) -> None:
    await live.org("acme")
    await _model(live, "acme", upstream)
    agent = await _llm_agent(live, "acme")
    token = _agent_env(agent["id"])["OPENAI_API_KEY"]
    async with openai.AsyncOpenAI(
        base_url=f"{live.server.gateway_url}/v1", api_key=token, max_retries=0
    ) as client:
        answer = await client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert answer.choices[0].message.content == TEXT
        r = await live.admin.post(f"/v1/orgs/acme/agents/{agent['id']}/pause")
        assert r.status_code == 200, r.text
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
    r = await live.admin.post(f"/v1/orgs/acme/agents/{agent['id']}/resume")
    assert r.status_code == 200, r.text

    async def running() -> bool:
        state: str = (await live.admin.get(f"/v1/orgs/acme/agents/{agent['id']}")).json()["state"]
        return state == "running"

    await eventually(running, timeout=30)
    assert _agent_env(agent["id"])["OPENAI_API_KEY"] != token
    refusals = [e for e in await _audit(live.admin, "acme") if e["action"] == "model.call"]
    assert any("paused" in e["detail"] or "pausing" in e["detail"] for e in refusals)


MANAGER = Path(__file__).parents[2] / "examples" / "llm_manager_agent.py"


async def test_ctx_llm_tags_calls_and_delegated_children_share_the_task_budget(
    live: Live, upstream: StandIn
) -> None:
    await live.org("acme")
    await _model(live, "acme", upstream)
    boss = await live.agent("acme", "boss", role="manager", command=[sys.executable, str(MANAGER)])
    await _llm_agent(live, "acme")
    task = await live.task(
        "acme",
        agent=boss["id"],
        payload={"model": "small", "childCalls": 60},
        maxTokens=600,
    )
    done = await live.wait_task("acme", task["id"])
    assert done["state"] == "completed", done
    result = done["result"]
    assert (result["own"], result["streamed"], result["missing"]) == (12, 12, "not_found")
    child = result["child"]["results"]
    admitted = [r for r in child if r["ok"]]
    refused = [r for r in child if not r["ok"]]
    assert admitted and refused
    assert all(f"task {task['id']}'s token budget" in r["details"] for r in refused)

    # the parent's own calls are its; the children's are theirs; together within the budget
    shown = (await live.admin.get(f"/v1/orgs/acme/tasks/{task['id']}")).json()
    assert shown["modelUsage"]["tokens"] == 24
    usage = await _usage(live.admin, "acme")
    assert usage["total"]["tokens"] == 24 + 12 * len(admitted) <= 600
    by_role = {r["role"]: r["tokensIn"] + r["tokensOut"] for r in usage["byRole"]}
    assert by_role == {"manager": 24, "writer": 12 * len(admitted)}


async def _cli(live: Live, *args: str) -> Result:
    target = ["--url", live.server.url, "--api-key", live.platform.new_admin_key]
    return await asyncio.to_thread(
        CliRunner().invoke, cli, [*target, *args], env={"COLUMNS": "200"}
    )


async def test_cli_declares_models_sets_budgets_and_shows_task_usage(
    live: Live, upstream: StandIn
) -> None:
    await live.org("acme")
    r = await live.admin.put("/v1/orgs/acme/secrets/provider-key", json={"value": upstream.key})
    assert r.status_code == 201, r.text
    missing = await _cli(
        live, "model", "add", "acme", "small", "--base-url", upstream.url, "--key-secret", "nope"
    )
    assert missing.exit_code == 4 and "no secret 'nope'" in missing.output
    added = await _cli(
        live,
        "model",
        "add",
        "acme",
        "small",
        "--base-url",
        upstream.url,
        "--key-secret",
        "provider-key",
        "--upstream-model",
        "standin-1",
        "--price-in",
        "0.15",
        "--price-out",
        "0.6",
    )
    assert added.exit_code == 0, added.output
    listed = await _cli(live, "model", "list", "acme")
    assert "standin-1" in listed.output and "0.15" in listed.output
    assert upstream.key not in listed.output + added.output

    budget_set = await _cli(live, "budget", "set", "acme", "--tokens", "5000")
    assert budget_set.exit_code == 0, budget_set.output
    shown = await _cli(live, "budget", "show", "acme")
    assert "0 of 5000 tokens" in shown.output and "its own budget" in shown.output

    agent = await _llm_agent(live, "acme")
    submitted = await _cli(
        live,
        "--json",
        "task",
        "submit",
        "acme",
        "--agent",
        agent["id"],
        "--payload",
        '{"model": "small", "calls": 2}',
        "--max-tokens",
        "1000",
    )
    assert submitted.exit_code == 0, submitted.output
    task_id = json.loads(submitted.output)["id"]
    await live.wait_task("acme", task_id)
    show = await _cli(live, "task", "show", "acme", task_id)
    assert "model usage: 24 tokens" in show.output, show.output
    usage = await _cli(live, "model", "usage", "acme")
    assert "2 calls, 24 tokens" in usage.output, usage.output

    removed = await _cli(live, "model", "remove", "acme", "small")
    assert removed.exit_code == 0
    gone = await _cli(live, "model", "remove", "acme", "small")
    assert gone.exit_code == 4 and "no model 'small'" in gone.output
    actions = [e["action"] for e in await _audit(live.admin, "acme")]
    assert {"model.declare", "model.remove", "model.budget"} <= set(actions)


async def test_a_provider_refusing_the_key_is_reported_without_quoting_it(
    live: Live, upstream: StandIn
) -> None:
    await live.org("acme")
    await _model(live, "acme", upstream)
    wrong = f"sk-wrong-{secrets.token_hex(8)}"
    r = await live.admin.put("/v1/orgs/acme/secrets/provider-key", json={"value": wrong})
    assert r.status_code == 200, r.text
    agent = await _llm_agent(live, "acme")
    token = _agent_env(agent["id"])["OPENAI_API_KEY"]
    async with openai.AsyncOpenAI(
        base_url=f"{live.server.gateway_url}/v1", api_key=token, max_retries=0
    ) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(
                model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
    assert refused.value.status_code == 502
    assert "provider key" in str(refused.value) and "provider-key" in str(refused.value)
    assert wrong not in str(refused.value) and wrong not in refused.value.response.text
    assert upstream.keys_seen == {f"Bearer {wrong}"}  # it was sent, and only upstream
