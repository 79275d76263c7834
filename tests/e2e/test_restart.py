"""kill -9 of the control plane: no agent runs on unsupervised, and a restart reconciles —
every accepted task completes, none twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.conftest import live_settings
from tests.support import wait_until


def _start(data: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_HEARTBEAT_SECONDS"] = "1"
    (data / "api.url").unlink(missing_ok=True)  # left behind by a killed control plane
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "up", "--data-dir", str(data), "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: (data / "api.url").exists() or proc.poll() is not None, timeout=30)
    assert proc.poll() is None
    return proc


def _agent_pids(data: Path) -> list[int]:
    out = []
    for p in psutil.process_iter(["environ", "cwd"]):
        try:
            env = p.info["environ"] or {}
        except (psutil.Error, OSError):
            continue
        if "CORRAL_AGENT_ID" in env and str(data) in (env.get("CORRAL_WORKSPACE") or ""):
            out.append(p.pid)
    return out


def test_kill_9_of_corral_up_then_restart_completes_every_task_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = _start(data)
    try:
        url = (data / "api.url").read_text().strip()
        key = (data / "admin.key").read_text().strip()
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert http.post("/v1/orgs", json={"name": "acme"}).status_code == 201
        r = http.post("/v1/orgs/acme/agents", json={"name": "w", "role": "worker", "wait": True})
        assert r.status_code == 201, r.text
        ids = [
            http.post(
                "/v1/orgs/acme/tasks",
                json={"role": "worker", "payload": {"op": "sleep", "seconds": 0.3}},
            ).json()["id"]
            for _ in range(8)
        ]

        def some_done() -> bool:
            states = [http.get(f"/v1/orgs/acme/tasks/{i}").json()["state"] for i in ids]
            return states.count("completed") >= 2

        wait_until(some_done, timeout=30)
        assert _agent_pids(data)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        wait_until(lambda: not _agent_pids(data), timeout=10)  # nothing runs unsupervised
        http.close()

        proc = _start(data)
        url = (data / "api.url").read_text().strip()
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        def all_done() -> bool:
            states = [http.get(f"/v1/orgs/acme/tasks/{i}").json()["state"] for i in ids]
            return all(s == "completed" for s in states)

        wait_until(all_done, timeout=60)
        for i in ids:
            history = [h["to"] for h in http.get(f"/v1/orgs/acme/tasks/{i}").json()["history"]]
            assert history.count("completed") == 1, (i, history)

        def back() -> bool:  # the API serves while agents are relaunched beside it
            agents = http.get("/v1/orgs/acme/agents").json()["agents"]
            return [a["state"] for a in agents if a["name"] == "w"] == ["running"]

        wait_until(back, timeout=60)
        http.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    wait_until(lambda: not _agent_pids(data), timeout=10)


async def test_a_second_control_plane_on_the_same_data_is_refused(tmp_path: Path) -> None:
    from corral.control.platform import Platform
    from corral.domain.errors import Conflict

    settings = live_settings(tmp_path / "data")
    async with Platform(settings):
        with pytest.raises(Conflict, match="another control plane is running"):
            async with Platform(settings):
                pass
    async with Platform(settings) as again:  # the first one stopped: free again
        assert again.dispatcher is not None
