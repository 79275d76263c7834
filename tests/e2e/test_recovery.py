"""A restart with many agents: the API serves before they are back, they are relaunched
several at a time (never more than the bound), and all of them come back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.api.server import running
from corral.control.lifecycle import Controller
from corral.control.recovery import RELAUNCH_CONCURRENCY
from corral.domain.agents import Agent
from corral.domain.tenancy import Organization
from tests.e2e.conftest import live_settings
from tests.support import eventually

ORGS, PER_ORG = 3, 4  # 12 agents: more than are relaunched at once


class HeldRelaunches:
    """Relaunches wait at this gate until the test opens it; counts how many wait at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = 0
        self.most = 0
        self.relaunched: set[str] = set()

    async def __call__(
        self, real: Any, controller: Controller, org: Organization, agent: Agent
    ) -> None:
        self.relaunched.add(agent.id)
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        await real(controller, org, agent)


@pytest.mark.timeout(300)  # a dozen agents, started twice
async def test_a_restart_serves_the_api_before_every_agent_is_back_and_all_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = live_settings(tmp_path / "data")
    async with running(settings) as srv:
        key = srv.platform.new_admin_key
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as admin:
            for o in range(ORGS):
                assert (await admin.post("/v1/orgs", json={"name": f"o{o}"})).status_code == 201
                for a in range(PER_ORG):
                    r = await admin.post(
                        f"/v1/orgs/o{o}/agents", json={"name": f"a{a}", "wait": True}
                    )
                    assert r.status_code == 201, r.text

    held = HeldRelaunches()
    real = Controller.restart_now

    async def restart_now(self: Controller, org: Organization, agent: Agent) -> None:
        await held(real, self, org, agent)

    monkeypatch.setattr(Controller, "restart_now", restart_now)
    async with (
        running(settings) as srv,
        httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as admin,
    ):
        # the API serves while every relaunch is held
        await eventually(lambda: held.waiting == RELAUNCH_CONCURRENCY, timeout=30)
        health = (await admin.get("/healthz")).json()
        assert health["recovery"] == f"relaunching agents: 0/{ORGS * PER_ORG}"
        orgs = (await admin.get("/v1/orgs")).json()["orgs"]
        assert sorted(o["name"] for o in orgs) == [f"o{o}" for o in range(ORGS)]
        r = await admin.post(
            "/v1/orgs/o0/tasks", json={"role": "general", "payload": {"op": "echo"}}
        )
        assert r.status_code == 201, r.text
        task = r.json()
        assert not srv.platform.recovered.is_set()
        r = await admin.post("/v1/orgs/o1/agents", json={"name": "new", "wait": True})
        assert r.status_code == 201, r.text  # an agent made meanwhile is recovery's no business
        new = r.json()["id"]

        held.gate.set()

        async def all_running() -> bool:
            for o in range(ORGS):
                agents = (await admin.get(f"/v1/orgs/o{o}/agents")).json()["agents"]
                if any(a["state"] != "running" for a in agents):
                    return False
            return True

        await eventually(all_running, timeout=90, message="every agent relaunched")
        await eventually(srv.platform.recovered.is_set, timeout=30)
        assert (await admin.get("/healthz")).json()["recovery"] == "done"
        assert held.most == RELAUNCH_CONCURRENCY  # several at once, never more
        assert len(held.relaunched) == ORGS * PER_ORG and new not in held.relaunched
        got = (await admin.get(f"/v1/orgs/o1/agents/{new}")).json()
        assert got["state"] == "running" and got["restarts"] == 0, got

        async def done() -> bool:
            got = (await admin.get(f"/v1/orgs/o0/tasks/{task['id']}")).json()
            return bool(got["state"] == "completed")

        await eventually(done, timeout=30, message="the task submitted during recovery ran")
