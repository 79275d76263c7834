"""Provision, pause to zero, resume, terminate — with real agent processes."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import psutil

from corral.api.server import running
from tests.e2e.conftest import Live, live_settings
from tests.support import eventually


def _pids_of(agent_id: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            env = proc.info["environ"] or {}
        except (psutil.Error, OSError):
            continue
        if env.get("CORRAL_AGENT_ID") == agent_id:
            found.append(proc.info["pid"])
    return found


async def test_provision_pause_resume_keeps_workspace_and_checkpoint(live: Live) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "keeper")
    assert agent["state"] == "running"
    aid = agent["id"]
    assert aid.startswith("agent-acme-keeper-")
    assert _pids_of(aid), "the agent runs as a process"

    t = await live.task(
        "acme", agent=aid, payload={"op": "write", "file": "notes.txt", "content": "kept"}
    )
    assert (await live.wait_task("acme", t["id"]))["state"] == "completed"

    r = await live.admin.post(f"/v1/orgs/acme/agents/{aid}/pause")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "paused" and r.json()["pausedAt"]
    await eventually(lambda: not _pids_of(aid), message="no process after pause")
    usage = (await live.admin.get("/v1/orgs/acme/usage")).json()["quota"]
    assert usage["pods"]["used"] == "0" and usage["persistentvolumeclaims"]["used"] == "1"

    r = await live.admin.post(f"/v1/orgs/acme/agents/{aid}/resume", params={"wait": "true"})
    assert r.json()["state"] == "running" and r.json()["resumedAt"]
    t = await live.task("acme", agent=aid, payload={"op": "read", "file": "notes.txt"})
    done = await live.wait_task("acme", t["id"])
    assert done["result"]["content"] == "kept"
    # the counter in the agent's state was checkpointed at pause and restored at resume
    assert done["result"]["tasks_done"] == 2


async def test_quota_and_limit_range_refusals_leave_nothing_behind(live: Live) -> None:
    await live.org("tiny", plan="free")
    before = (await live.admin.get("/v1/orgs/tiny/usage")).json()["quota"]
    r = await live.admin.post(
        "/v1/orgs/tiny/agents", json={"name": "huge", "cpuLimit": "3", "cpu": "3"}
    )
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded" and err["details"]["resource"] == "limits.cpu"
    assert err["details"]["allowed"] == "2"
    await live.agent("tiny", "a1")
    await live.agent("tiny", "a2")
    r = await live.admin.post("/v1/orgs/tiny/agents", json={"name": "a3"})
    assert r.status_code == 409 and "agent" in r.json()["error"]["message"]
    names = [a["name"] for a in (await live.admin.get("/v1/orgs/tiny/agents")).json()["agents"]]
    assert names == ["a1", "a2"]
    after = (await live.admin.get("/v1/orgs/tiny/usage")).json()["quota"]
    assert after["agents"]["used"] == "2" and before["agents"]["used"] == "0"
    ws = live.data_dir / "agents" / "orgs" / "tiny" / "agents"
    assert sorted(p.name.split("-")[2] for p in ws.iterdir()) == ["a1", "a2"]


async def test_sixteenth_pod_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    """An operator plan whose agent limit (20) is above its pods quota (15), so the pods
    quota is what bites, as in the seed."""
    plans = tmp_path / "plans.yaml"
    plans.write_text(
        "- name: wide\n  agentLimit: 20\n  quota: {pods: 15, persistentvolumeclaims: 20}\n"
    )
    settings = live_settings(tmp_path / "data", plans_file=plans)
    async with running(settings) as srv:
        headers = {"Authorization": f"Bearer {srv.platform.new_admin_key}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as admin:
            assert (
                await admin.post("/v1/orgs", json={"name": "big", "plan": "wide"})
            ).status_code == 201
            small = {"cpu": "100m", "memory": "64Mi", "cpuLimit": "100m", "memoryLimit": "256Mi"}
            for i in range(15):
                r = await admin.post("/v1/orgs/big/agents", json={"name": f"p{i}", **small})
                assert r.status_code == 201, r.text
            r = await admin.post("/v1/orgs/big/agents", json={"name": "p15", **small})
            assert r.status_code == 409
            err = r.json()["error"]
            assert err["details"] == {
                "resource": "pods",
                "asked": "1",
                "used": "15",
                "allowed": "15",
            }
            assert "pods" in err["message"]
            names = [a["name"] for a in (await admin.get("/v1/orgs/big/agents")).json()["agents"]]
            assert "p15" not in names and len(names) == 15
            quota = (await admin.get("/v1/orgs/big/usage")).json()["quota"]
            assert quota["pods"]["used"] == "15" and quota["agents"]["used"] == "15"
            assert not any(
                "-p15-" in p.name
                for p in (tmp_path / "data" / "agents" / "orgs" / "big" / "agents").iterdir()
            )
            assert not [pid for pid in _all_agent_pids() if "-p15-" in pid[1]]


def _all_agent_pids() -> list[tuple[int, str]]:
    found = []
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            env = proc.info["environ"] or {}
        except (psutil.Error, OSError):
            continue
        if "CORRAL_AGENT_ID" in env:
            found.append((proc.info["pid"], env["CORRAL_AGENT_ID"]))
    return found


async def test_kill_9_of_an_agent_is_detected_and_it_restarts(live: Live) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "crashy")
    # the agent, and with the sandbox its waiter outside its PID namespace: both show its
    # environment; killing the agent itself is the crash
    before = _pids_of(agent["id"])
    assert 1 <= len(before) <= 2
    inner = [p for p in before if psutil.Process(p).ppid() in before] or before
    os.kill(inner[0], 9)

    async def restarted() -> bool:
        a = (await live.admin.get(f"/v1/orgs/acme/agents/{agent['id']}")).json()
        pids = _pids_of(agent["id"])
        return (
            a["restarts"] == 1
            and a["state"] == "running"
            and bool(pids)
            and not {*pids} & {*before}
        )

    await eventually(restarted, timeout=20, message="agent restarted after kill -9")


async def test_terminate_releases_quota_and_deletes_workspace(live: Live) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "bye")
    r = await live.admin.delete(f"/v1/orgs/acme/agents/{agent['id']}")
    assert r.status_code == 204
    assert not _pids_of(agent["id"])
    quota = (await live.admin.get("/v1/orgs/acme/usage")).json()["quota"]
    assert quota["agents"]["used"] == "0" and quota["pods"]["used"] == "0"
    assert not (live.data_dir / "agents" / "orgs" / "acme" / "agents" / agent["id"]).exists()


async def test_a_terminated_agent_leaves_nothing_in_the_control_planes_memory(
    live: Live,
) -> None:
    """Agents come and go for as long as the platform runs: what the controller and the
    dispatcher keep of each (its lock, when it was heard from, whether its crash count is
    known, when it last worked) goes with it."""
    await live.org("acme")
    agent = await live.agent("acme", "brief")
    task = await live.task("acme", role="general", payload={"op": "echo"})

    async def completed() -> bool:
        got = (await live.admin.get(f"/v1/orgs/acme/tasks/{task['id']}")).json()
        return bool(got["state"] == "completed")

    await eventually(completed, timeout=30, message="task completed")
    p = live.platform
    controller, dispatcher = p.controller, p.dispatcher
    assert agent["id"] in controller._last_seen and agent["id"] in dispatcher.book.last_active
    r = await live.admin.delete(f"/v1/orgs/acme/agents/{agent['id']}")
    assert r.status_code == 204
    kept = {
        "lock": controller._locks,
        "last seen": controller._last_seen,
        "heard": controller._heard,
        "steady": controller._steady,
        "last active": dispatcher.book.last_active,
        "batching": dispatcher.snapshot.batching,
        "slots": dispatcher.snapshot.slots,
    }
    assert [what for what, held in kept.items() if agent["id"] in held] == []
