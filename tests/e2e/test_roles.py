"""Roles as declared deployments, end to end with real agent processes: each role's agents run
its own program, the queue decides how many there are (never more than ``maxAgents`` or the
quota), ``minAgents`` stay warm, idle ones pause after the role's timeout and wake for the next
task, and a changed role replaces its idle agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from corral.cli.main import cli
from tests.e2e.conftest import TEST_AGENTS, Live
from tests.support import eventually

ROLE_AGENT = [sys.executable, str(TEST_AGENTS / "role_agent.py")]
DONE = {"completed", "blocked", "failed", "cancelled", "expired"}


async def _apply(live: Live, org: str, *roles: dict[str, Any]) -> dict[str, Any]:
    r = await live.admin.put(f"/v1/orgs/{org}/roles", json={"roles": list(roles)})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _agents(live: Live, org: str, *, terminated: bool = False) -> list[dict[str, Any]]:
    params = {"terminated": "true"} if terminated else {}
    r = await live.admin.get(f"/v1/orgs/{org}/agents", params=params)
    assert r.status_code == 200, r.text
    agents: list[dict[str, Any]] = r.json()["agents"]
    return agents


async def _held(live: Live, org: str) -> tuple[int, int]:
    """The agents and pods ``org`` holds against its quota."""
    usage = (await live.admin.get(f"/v1/orgs/{org}")).json()["usage"]
    return int(usage["agents"]["used"]), int(usage["pods"]["used"])


async def _all_done(
    live: Live, org: str, ids: list[str], *, timeout: float
) -> list[dict[str, Any]]:
    return [await live.wait_task(org, i, timeout=timeout) for i in ids]


async def test_a_custom_program_role_under_load_gets_only_its_own_program(live: Live) -> None:
    await live.org("acme")
    await _apply(
        live,
        "acme",
        {
            "name": "assistant",
            "command": ROLE_AGENT,
            "slots": 2,
            "maxAgents": 3,
            "env": {"MODEL": "small"},
        },
    )
    ids = [
        (await live.task("acme", role="assistant", payload={"sleep": 0.3}))["id"] for _ in range(12)
    ]
    done = await _all_done(live, "acme", ids, timeout=90)
    assert {t["state"] for t in done} == {"completed"}, done
    assert {t["result"]["model"] for t in done} == {"small"}
    agents = await _agents(live, "acme", terminated=True)
    assert 1 <= len(agents) <= 3
    for a in agents:
        assert a["command"] == ROLE_AGENT, a
        assert a["role"] == "assistant"
    assert {t["result"]["agent"] for t in done} <= {a["id"] for a in agents}


async def test_one_task_provisions_at_most_one_agent(live: Live) -> None:
    await live.org("acme")
    await _apply(live, "acme", {"name": "reviewer", "command": ROLE_AGENT, "maxAgents": 5})
    for _ in range(3):
        t = await live.task("acme", role="reviewer", payload={})
        assert (await live.wait_task("acme", t["id"], timeout=60))["state"] == "completed"
        assert len(await _agents(live, "acme", terminated=True)) == 1


async def test_a_burst_of_40_provisions_exactly_max_agents_and_never_exceeds_quota(
    live: Live,
) -> None:
    await live.org("acme")
    await _apply(
        live, "acme", {"name": "worker", "command": ROLE_AGENT, "slots": 4, "maxAgents": 5}
    )
    seen: list[int] = []
    held: list[tuple[int, int]] = []  # agents and pods the org held, as its quota says

    async def watch() -> None:
        while True:
            seen.append(len(await _agents(live, "acme", terminated=True)))
            held.append(await _held(live, "acme"))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        ids = [
            (await live.task("acme", role="worker", payload={"sleep": 1.0}))["id"]
            for _ in range(40)
        ]
        done = await _all_done(live, "acme", ids, timeout=180)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert {t["state"] for t in done} == {"completed"}
    assert len(await _agents(live, "acme", terminated=True)) == 5
    assert max(seen) <= 5
    assert max(a for a, _ in held) <= 5
    assert max(p for _, p in held) <= 5


async def test_a_role_never_takes_an_org_past_its_quota(live: Live) -> None:
    await live.org("tiny", plan="free")  # agent limit 2
    await _apply(live, "tiny", {"name": "worker", "command": ROLE_AGENT, "maxAgents": 5})
    ids = [(await live.task("tiny", role="worker", payload={"sleep": 0.5}))["id"] for _ in range(8)]
    done = await _all_done(live, "tiny", ids, timeout=120)
    assert {t["state"] for t in done} == {"completed"}
    assert len(await _agents(live, "tiny", terminated=True)) == 2
    assert await _held(live, "tiny") == (2, 2)


async def test_min_agents_are_kept_warm(live: Live) -> None:
    await live.org("acme")
    await _apply(
        live,
        "acme",
        {
            "name": "warm",
            "command": ROLE_AGENT,
            "minAgents": 2,
            "maxAgents": 4,
            "idleTimeout": "1s",
        },
    )

    async def two_running() -> list[dict[str, Any]] | None:
        up = [a for a in await _agents(live, "acme") if a["state"] == "running"]
        return up if len(up) == 2 else None

    first = await eventually(two_running, timeout=60, message="2 warm agents")
    # idle far past the role's timeout, they stay: the role keeps 2
    r = await live.admin.delete(f"/v1/orgs/acme/agents/{first[0]['name']}")
    assert r.status_code == 204
    again = await eventually(two_running, timeout=60, message="2 warm agents again")
    assert first[0]["id"] not in {a["id"] for a in again}
    assert len(await _agents(live, "acme", terminated=True)) == 3


async def test_idle_agents_pause_after_the_role_s_timeout_and_wake_for_the_next_task(
    live: Live,
) -> None:
    await live.org("acme")
    await _apply(live, "acme", {"name": "napper", "command": ROLE_AGENT, "idleTimeout": "1s"})
    t = await live.task("acme", role="napper", payload={})
    first = await live.wait_task("acme", t["id"], timeout=60)
    agent_id = first["result"]["agent"]

    async def paused() -> bool:
        r = await live.admin.get(f"/v1/orgs/acme/agents/{agent_id}")
        return bool(r.json()["state"] == "paused")

    await eventually(paused, timeout=30, message="the idle agent paused")
    t = await live.task("acme", role="napper", payload={})
    second = await live.wait_task("acme", t["id"], timeout=60)
    assert second["result"]["agent"] == agent_id  # woken, not a new one
    assert len(await _agents(live, "acme", terminated=True)) == 1


async def test_applying_a_changed_role_replaces_its_idle_agents(live: Live) -> None:
    await live.org("acme")
    spec = {"name": "svc", "command": ROLE_AGENT, "minAgents": 1, "env": {"MODEL": "old"}}
    await _apply(live, "acme", spec)

    async def running(version: int) -> dict[str, Any] | None:
        for a in await _agents(live, "acme"):
            if a["state"] == "running" and a["roleVersion"] == version:
                return a
        return None

    old = await eventually(lambda: running(1), timeout=60, message="the first agent")
    changes = await _apply(live, "acme", {**spec, "env": {"MODEL": "new"}})
    assert changes["changes"][0]["action"] == "update"
    new = await eventually(lambda: running(2), timeout=60, message="the replacement")
    assert new["id"] != old["id"]
    gone = (await live.admin.get(f"/v1/orgs/acme/agents/{old['id']}")).json()
    assert gone["state"] == "terminated"
    t = await live.task("acme", role="svc", payload={})
    assert (await live.wait_task("acme", t["id"], timeout=60))["result"]["model"] == "new"


async def test_a_task_for_a_role_nobody_declared_waits_and_says_why(live: Live) -> None:
    await live.org("acme")
    t = await live.task("acme", role="ghost", payload={})

    async def why() -> str | None:
        body = (await live.admin.get(f"/v1/orgs/acme/tasks/{t['id']}")).json()
        assert body["state"] == "queued"
        waiting: str | None = body.get("waiting")
        return waiting

    reason = await eventually(why, timeout=30, message="a reason to wait")
    assert reason == "no agent serves role ghost and no role ghost is declared"
    assert await _agents(live, "acme", terminated=True) == []


async def test_terminating_an_agent_frees_its_name_and_takes_it_off_the_lists(
    live: Live,
) -> None:
    await live.org("acme")
    first = await live.agent("acme", "solo", role="worker")
    shown = await live.admin.get("/v1/orgs/acme/agents/solo")  # by name
    assert shown.json()["id"] == first["id"]
    assert (await live.admin.delete("/v1/orgs/acme/agents/solo")).status_code == 204
    assert await _agents(live, "acme") == []
    history = await _agents(live, "acme", terminated=True)
    assert [(a["id"], a["state"]) for a in history] == [(first["id"], "terminated")]
    second = await live.agent("acme", "solo", role="worker")
    assert second["id"] != first["id"]
    assert (await live.admin.get("/v1/orgs/acme/agents/solo")).json()["id"] == second["id"]
    grant = await live.admin.post("/v1/orgs/acme/grants", json={"secret": "tok", "agent": "solo"})
    assert grant.status_code == 201, grant.text
    assert grant.json()["agent"] == second["id"]  # by name: the grant names the agent's id
    t = await live.task("acme", agent="solo", payload={"op": "echo"})
    done = await live.wait_task("acme", t["id"], timeout=60)
    assert (done["state"], done["assignedAgent"]) == ("completed", second["id"])
    r = await _cli(live, "--json", "agent", "show", "acme", "solo")
    assert json.loads(r.stdout)["id"] == second["id"]
    r = await _cli(live, "--json", "agent", "list", "acme")
    assert [a["id"] for a in json.loads(r.stdout)["agents"]] == [second["id"]]
    r = await _cli(live, "--json", "agent", "list", "acme", "--all")
    assert [a["id"] for a in json.loads(r.stdout)["agents"]] == [first["id"], second["id"]]


async def test_a_failed_agent_releases_its_quota(live: Live, tmp_path: Path) -> None:
    await live.org("acme")
    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    r = await live.admin.post(
        "/v1/orgs/acme/agents", json={"name": "crashy", "role": "worker", "command": crash}
    )
    assert r.status_code == 201, r.text

    async def failed() -> bool:
        a = (await live.admin.get("/v1/orgs/acme/agents/crashy")).json()
        return bool(a["state"] == "failed")

    await eventually(failed, timeout=60, message="the agent failed")
    usage = (await live.admin.get("/v1/orgs/acme")).json()["usage"]
    assert usage["agents"]["used"] == "0"
    assert usage["pods"]["used"] == "0"
    assert usage["requests.cpu"]["used"] == "0"
    assert usage["persistentvolumeclaims"]["used"] == "0"
    assert (await live.admin.delete("/v1/orgs/acme/agents/crashy")).status_code == 204
    assert await _held(live, "acme") == (0, 0)  # nothing released twice


async def _cli(live: Live, *args: str) -> Result:
    target = ["--url", live.server.url, "--api-key", live.platform.new_admin_key]
    return await asyncio.to_thread(
        CliRunner().invoke, cli, [*target, *args], env={"COLUMNS": "200"}
    )


ROLES_YAML = """\
roles:
  - name: assistant
    command: ["python", "/srv/agents/assistant.py"]   # omitted: the built-in agent
    slots: 4
    resources: {requests: {cpu: 500m, memory: 1Gi}, limits: {cpu: "1", memory: 2Gi}}
    minAgents: 0
    maxAgents: 5
    idleTimeout: 5m
    env: {MODEL: small}
  - name: reviewer
    maxAgents: 2
"""


async def test_cli_role_apply_is_idempotent_dry_runs_show_the_diff_and_show_lists_agents(
    live: Live, tmp_path: Path
) -> None:
    await live.org("acme")
    roles = tmp_path / "roles.yaml"
    roles.write_text(ROLES_YAML)

    r = await _cli(live, "role", "apply", "acme", "-f", str(roles), "--dry-run")
    assert r.exit_code == 0, r.output
    assert r.stdout == "role assistant would be created\nrole reviewer would be created\n"
    assert (await live.admin.get("/v1/orgs/acme/roles")).json() == {"roles": []}

    r = await _cli(live, "role", "apply", "acme", "-f", str(roles))
    assert r.stdout == "role assistant created\nrole reviewer created\n"
    r = await _cli(live, "role", "apply", "acme", "-f", str(roles))
    assert r.stdout == "role assistant unchanged\nrole reviewer unchanged\n"

    roles.write_text(ROLES_YAML.replace("maxAgents: 5", "maxAgents: 7"))
    r = await _cli(live, "role", "apply", "acme", "-f", str(roles), "--dry-run")
    assert r.stdout == (
        "role assistant would change\n  maxAgents: 5 -> 7\nrole reviewer unchanged\n"
    )

    r = await _cli(live, "--json", "role", "show", "acme", "assistant")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["command"] == ["python", "/srv/agents/assistant.py"]
    assert (shown["slots"], shown["maxAgents"], shown["env"]) == (4, 5, {"MODEL": "small"})
    assert shown["agents"] == []

    r = await _cli(live, "role", "list", "acme")
    assert "assistant" in r.stdout and "(built-in)" in r.stdout

    r = await _cli(live, "role", "delete", "acme", "reviewer")
    assert r.exit_code == 0, r.output
    r = await _cli(live, "role", "show", "acme", "reviewer")
    assert r.exit_code == 4
    assert r.stderr == "error: role 'reviewer' not found\n"


async def test_cli_role_apply_refuses_a_bad_file_and_changes_nothing(
    live: Live, tmp_path: Path
) -> None:
    await live.org("acme")
    bad = tmp_path / "bad.yaml"
    bad.write_text(ROLES_YAML.replace("slots: 4", "slots: 0"))
    r = await _cli(live, "role", "apply", "acme", "-f", str(bad))
    assert r.exit_code == 2
    assert "slots" in r.stderr
    bad.write_text("roles: [unclosed")
    r = await _cli(live, "role", "apply", "acme", "-f", str(bad))
    assert r.exit_code == 2
    assert "not valid YAML" in r.stderr
    r = await _cli(live, "role", "apply", "acme", "-f", str(tmp_path / "missing.yaml"))
    assert r.exit_code == 2
    assert (await live.admin.get("/v1/orgs/acme/roles")).json() == {"roles": []}
