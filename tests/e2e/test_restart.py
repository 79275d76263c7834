"""kill -9 of the control plane: its agents run on for the next start to adopt (or, with
adopting off or when they could not reach the next one, are ended and restarted), never
unsupervised past their window; every accepted task completes, none twice."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.e2e.conftest import live_settings
from tests.support import wait_until

HERE = Path(__file__).resolve().parent


def _start(data: Path, **settings: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_HEARTBEAT_SECONDS"] = "1"
    # this directory's agent modules (squatter_agent), importable by the fork servers
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    env |= {f"CORRAL_{k.upper()}": v for k, v in settings.items()}
    (data / "api.url").unlink(missing_ok=True)  # left behind by a killed control plane
    # each start's log beside the data dir, for a failure to be read
    log = data.parent / f"up-{len(list(data.parent.glob('up-*.log')))}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli", "up", "--data-dir", str(data), "--port", "0"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
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


class _Run:
    """``corral up`` on ``data`` with an agent of org acme at work on 8 tasks of 0.3 s."""

    def __init__(self, data: Path, **settings: str) -> None:
        self.data = data
        self.proc = _start(data, **settings)
        self.http = self._client()
        assert self.http.post("/v1/orgs", json={"name": "acme"}).status_code == 201
        r = self.http.post(
            "/v1/orgs/acme/agents", json={"name": "w", "role": "worker", "wait": True}
        )
        assert r.status_code == 201, r.text
        self.ids = [
            self.http.post(
                "/v1/orgs/acme/tasks",
                json={"role": "worker", "payload": {"op": "sleep", "seconds": 0.3}},
            ).json()["id"]
            for _ in range(8)
        ]
        wait_until(lambda: self.states().count("completed") >= 2, timeout=30)

    def _client(self) -> httpx.Client:
        url = (self.data / "api.url").read_text().strip()
        key = (self.data / "admin.key").read_text().strip()
        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def states(self) -> list[str]:
        return [self.http.get(f"/v1/orgs/acme/tasks/{i}").json()["state"] for i in self.ids]

    def kill(self) -> list[int]:
        """kill -9 of the control plane; the agent's pids an instant before."""
        pids = _agent_pids(self.data)
        assert pids
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.http.close()
        return pids

    def restart(self, **settings: str) -> None:
        self.proc = _start(self.data, **settings)
        self.http = self._client()

    def every_task_completed_once(self) -> list[dict[str, object]]:
        try:  # within the test's own timeout, to say where each task stands if it fails
            wait_until(lambda: all(s == "completed" for s in self.states()), timeout=45)
        except AssertionError as exc:
            tasks = [self.http.get(f"/v1/orgs/acme/tasks/{i}").json() for i in self.ids]
            raise AssertionError(json.dumps([t["history"] for t in tasks], indent=1)) from exc
        tasks = [self.http.get(f"/v1/orgs/acme/tasks/{i}").json() for i in self.ids]
        for t in tasks:
            history = [h["to"] for h in t["history"]]
            assert history.count("completed") == 1, (t["id"], history)

        def back() -> bool:  # the API serves while agents are relaunched beside it
            agents = self.http.get("/v1/orgs/acme/agents").json()["agents"]
            return [a["state"] for a in agents if a["name"] == "w"] == ["running"]

        wait_until(back, timeout=60)
        return tasks

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        wait_until(lambda: not _agent_pids(self.data), timeout=30)


@pytest.mark.parametrize("outage", [0, 12])
def test_kill_9_of_corral_up_leaves_its_agents_to_the_next_start_which_adopts_them(
    tmp_path: Path, outage: int
) -> None:
    """With the next start at once, or 12 s later: an agent cannot be heard while no control
    plane runs, and that is not its silence (heartbeats every 1 s here: an agent silent 10 s
    under a running control plane is judged hung)."""
    run = _Run(tmp_path / "data")
    try:
        pids = run.kill()
        if outage:  # the outage's length is the stimulus: past the silence limit
            threading.Event().wait(outage)
        assert set(pids) <= set(_agent_pids(run.data))  # kept for the next start
        run.restart()
        tasks = run.every_task_completed_once()
        # adopted, not restarted: the same process, and none of its work was run again
        assert set(pids) == set(_agent_pids(run.data))
        assert [t["attempts"] for t in tasks] == [1] * len(tasks)
    finally:
        run.stop()


def test_with_adopting_off_nothing_outlives_a_kill_9_and_the_restart_reruns_the_work(
    tmp_path: Path,
) -> None:
    run = _Run(tmp_path / "data", adopt_seconds="0")
    try:
        run.kill()
        wait_until(lambda: not _agent_pids(run.data), timeout=10)  # nothing runs unsupervised
        run.restart(adopt_seconds="0")
        run.every_task_completed_once()
    finally:
        run.stop()


def test_agents_nobody_adopts_end_when_their_window_does(tmp_path: Path) -> None:
    run = _Run(tmp_path / "data", adopt_seconds="2")
    try:
        pids = run.kill()
        assert set(pids) <= set(_agent_pids(run.data))
        wait_until(lambda: not _agent_pids(run.data), timeout=60)  # 2 s, on a loaded machine
    finally:
        run.stop()


def test_agents_that_could_not_reach_the_next_start_are_restarted_not_adopted(
    tmp_path: Path,
) -> None:
    run = _Run(tmp_path / "data")
    gateway = json.loads((run.data / "agent-endpoints.json").read_text())["gateway"]
    try:
        pids = run.kill()
        # another program took the model gateway's port meanwhile: the agents' sandbox lets
        # them connect to the old port alone, so they are restarted, with the new one
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taken.bind(("127.0.0.1", urlsplit(gateway).port or 0))
            taken.listen()
            run.restart()
            run.every_task_completed_once()
            now = _agent_pids(run.data)
            assert now and not set(now) & set(pids)
            moved = json.loads((run.data / "agent-endpoints.json").read_text())["gateway"]
            assert moved != gateway
    finally:
        run.stop()


def _confined(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return "\nSeccomp:\t2" in status and "\nNoNewPrivs:\t1" in status


def test_agents_started_under_a_looser_sandbox_are_restarted_not_adopted(
    tmp_path: Path,
) -> None:
    """The operator restarts with the sandbox on where it was off: an agent left running
    unconfined must not be adopted as it is, but restarted, confined."""
    from corral.runtime.local.confinement import host_report

    if host_report().level != "full":
        pytest.skip(f"this host cannot give every layer: {host_report().describe()}")
    run = _Run(tmp_path / "data", sandbox="off")
    try:
        pids = run.kill()
        assert not any(_confined(pid) for pid in pids)
        run.restart(sandbox="best-effort")
        run.every_task_completed_once()
        now = _agent_pids(run.data)
        assert now and not set(now) & set(pids)
        assert all(_confined(pid) for pid in now)
    finally:
        run.stop()


def test_an_agent_cannot_take_the_platforms_ports_while_no_control_plane_runs(
    tmp_path: Path,
) -> None:
    """A hostile agent tries all the time to listen on the bus's port and the gateway's: the
    moment they are free (the control plane killed, its nats-server gone) it would have the
    other agents' reconnects and push the next start elsewhere. Its sandbox allows no bind:
    every try is refused, the next start takes both ports back and adopts it."""
    from corral.runtime.local.confinement import host_report

    if host_report().level != "full":
        pytest.skip(f"this host cannot give every layer: {host_report().describe()}")
    data = tmp_path / "data"
    proc = _start(data)
    url = (data / "api.url").read_text().strip()
    key = (data / "admin.key").read_text().strip()
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    try:
        assert http.post("/v1/orgs", json={"name": "mal"}).status_code == 201
        command = [sys.executable, "-m", "squatter_agent"]
        r = http.post(
            "/v1/orgs/mal/agents",
            json={"name": "s", "role": "worker", "command": command, "wait": True},
        )
        assert r.status_code == 201, r.text
        agent_id = r.json()["id"]
        record = data / "agents/orgs/mal/agents" / agent_id / "workspace/squat.json"

        def squatted() -> dict[str, Any] | None:
            try:
                got: dict[str, Any] = json.loads(record.read_text())
                return got
            except (OSError, ValueError):
                return None

        wait_until(squatted, timeout=30)
        nats = next(c for c in psutil.Process(proc.pid).children() if "nats" in c.name())
        pids = _agent_pids(data)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        http.close()
        nats.wait(timeout=30)  # its port is free from now on
        freed = time.time()
        wait_until(lambda: (squatted() or {}).get("at", 0) > freed + 1, timeout=30)
        proc = _start(data)
        url = (data / "api.url").read_text().strip()
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        got = squatted()
        assert got is not None and got["bound"] == [], got
        assert set(got["errors"]) == {"EACCES"}, got
        assert set(_agent_pids(data)) == set(pids)  # adopted: both ports came back
        r = http.post("/v1/orgs/mal/tasks", json={"role": "worker", "payload": {}})
        assert r.status_code == 201, r.text
        task = r.json()["id"]
        wait_until(
            lambda: http.get(f"/v1/orgs/mal/tasks/{task}").json()["state"] == "completed",
            timeout=30,
        )
    finally:
        http.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        wait_until(lambda: not _agent_pids(data), timeout=30)


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


async def test_events_the_last_control_plane_received_and_never_recorded_come_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The event consumer acknowledges cumulatively: events a control plane received and
    died before recording would be acknowledged unread by the first one the next start
    records (an adopted agent's result among them, and its task would run for good), or at
    best come back after the ack wait. The next start, not only a replica's takeover,
    releases them first."""
    import asyncio
    import logging

    from corral.api.server import running
    from tests.support import eventually

    data = tmp_path / "data"
    async with running(live_settings(data)) as srv:
        key = srv.platform.new_admin_key
        async with httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as http:
            assert (await http.post("/v1/orgs", json={"name": "acme"})).status_code == 201
            r = await http.post("/v1/orgs/acme/agents", json={"name": "w", "wait": True})
            assert r.status_code == 201, r.text
            # from now on the control plane receives the agent's events and records none
            held = asyncio.Event()

            async def hold(event: object) -> None:
                held.set()
                await asyncio.Event().wait()

            srv.platform.dispatcher.events.handle = hold  # type: ignore[method-assign]
            await eventually(held.is_set, timeout=30, message="a heartbeat received")
    caplog.set_level(logging.INFO, logger="corral.recovery")
    async with running(live_settings(data)):

        def released() -> bool:
            return any("previous control plane held" in m for m in caplog.messages)

        await eventually(released, timeout=30, message="the held events released")
