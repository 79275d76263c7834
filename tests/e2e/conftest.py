"""A whole running platform per test: store, vault, its own nats-server, local agent
processes and the HTTP API on a free port — the real parts a user would run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from corral.api.server import RunningServer, running
from corral.settings import Settings
from tests.support import eventually


@dataclass
class Live:
    server: RunningServer
    admin: httpx.AsyncClient
    data_dir: Path

    @property
    def platform(self) -> Any:
        return self.server.platform

    def client(self, key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    async def org(
        self, name: str, plan: str = "standard"
    ) -> tuple[dict[str, Any], httpx.AsyncClient]:
        r = await self.admin.post("/v1/orgs", json={"name": name, "plan": plan})
        assert r.status_code == 201, r.text
        body = r.json()
        return body, self.client(body["apiKey"])

    async def agent(
        self, org: str, name: str, role: str = "general", **extra: Any
    ) -> dict[str, Any]:
        r = await self.admin.post(
            f"/v1/orgs/{org}/agents", json={"name": name, "role": role, "wait": True, **extra}
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    async def roles(self, org: str, *roles: dict[str, Any]) -> dict[str, Any]:
        """Declare ``org``'s roles (``{"name": "worker"}``: the built-in agent, on demand)."""
        r = await self.admin.put(f"/v1/orgs/{org}/roles", json={"roles": list(roles)})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def task(self, org: str, **body: Any) -> dict[str, Any]:
        r = await self.admin.post(f"/v1/orgs/{org}/tasks", json=body)
        assert r.status_code == 201, r.text
        task: dict[str, Any] = r.json()
        return task

    async def wait_task(self, org: str, task_id: str, *, timeout: float = 30.0) -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            t = (await self.admin.get(f"/v1/orgs/{org}/tasks/{task_id}")).json()
            terminal = {"completed", "blocked", "failed", "cancelled", "expired"}
            return t if t["state"] in terminal else None

        return await eventually(done, timeout=timeout, message=f"task {task_id} finished")


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: the misbehaving agent programs the end-to-end tests run (lifecycle_agent.py, ...)
TEST_AGENTS = Path(__file__).resolve().parent


def live_settings(data_dir: Path, **overrides: Any) -> Settings:
    """The example agents' directory (and the tests' own agent programs) is opened to
    agents, as an operator opens the place their agents' programs live
    (``CORRAL_SANDBOX_READ_ONLY``)."""
    return Settings(
        data_dir=data_dir,
        port=0,
        heartbeat_seconds=1.0,
        **{"sandbox_read_only": (str(EXAMPLES), str(TEST_AGENTS)), **overrides},
    )


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    data = tmp_path / "data"
    async with (
        running(live_settings(data)) as srv,
        httpx.AsyncClient(
            base_url=srv.url,
            headers={"Authorization": f"Bearer {srv.platform.new_admin_key}"},
            timeout=30,
        ) as admin,
    ):
        yield Live(srv, admin, data)


def agent_processes(agent_id: str) -> list[psutil.Process]:
    """The processes that show ``agent_id`` in their environment: the agent, and with the
    sandbox the waiter the runtime tracks (outside the agent's PID namespace)."""
    found = []
    for proc in psutil.process_iter(["environ"]):
        try:
            if (proc.info["environ"] or {}).get("CORRAL_AGENT_ID") == agent_id:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def the_agent(agent_id: str) -> psutil.Process:
    """The agent's own process (the innermost of :func:`agent_processes`)."""
    procs = agent_processes(agent_id)
    pids = {p.pid for p in procs}
    inner = [p for p in procs if p.ppid() in pids] or procs
    assert len(inner) == 1, [p.pid for p in procs]
    return inner[0]
