"""A hung bus is survived: the platform's own nats-server stopped (SIGSTOP) under load, longer
than an agent may stay silent, then resumed. Every task completes once, no agent is failed or
charged for a crash because of the bus, and quota is held only by running agents.

The outage lasts 20 s here: twice the silence limit these tests run with (heartbeats every
second: an agent silent 10 s is judged hung), which is what the outage must outlast to test
anything. ``CORRAL_TEST_BUS_STOP_SECONDS=60`` runs the issue's own 60 s.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Live, the_agent
from tests.support import eventually

AGENT = [sys.executable, str(Path(__file__).with_name("lifecycle_agent.py"))]
STOP_SECONDS = float(os.environ.get("CORRAL_TEST_BUS_STOP_SECONDS", "20"))
TASKS = 400


async def _states(live: Live, org: str, ids: list[str]) -> dict[str, str]:
    states: dict[str, str] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = (await live.admin.get(f"/v1/orgs/{org}/tasks", params=params)).json()
        states.update({t["id"]: t["state"] for t in page["tasks"]})
        cursor = page.get("nextCursor")
        if not cursor:
            return {i: states.get(i, "?") for i in ids}


async def _agents(live: Live, org: str) -> list[dict[str, Any]]:
    return (await live.admin.get(f"/v1/orgs/{org}/agents")).json()["agents"]  # type: ignore[no-any-return]


@pytest.mark.timeout(300 + 2 * STOP_SECONDS)
async def test_a_hung_bus_is_survived_every_task_completes_and_no_agent_fails(
    live: Live,
) -> None:
    await live.org("acme")
    for name in ("w1", "w2"):
        await live.agent("acme", name, role="odd", command=AGENT, slots=2)
    ids = [
        (await live.task("acme", role="odd", payload={"op": "sleep", "seconds": 0.05}))["id"]
        for _ in range(TASKS)
    ]

    async def some_completed() -> bool:
        return list((await _states(live, "acme", ids)).values()).count("completed") >= 20

    await eventually(some_completed, timeout=60, interval=0.2, message="work under way")
    nats = live.platform.nats
    assert nats is not None and nats.pid is not None
    pid = nats.pid
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        health = live.platform.bus_health
        await eventually(lambda: health.disturbed(), timeout=30, message="the outage noticed")
        # the outage's length is the stimulus: held until it has lasted STOP_SECONDS
        await eventually(
            lambda: time.monotonic() - stopped >= STOP_SECONDS,
            timeout=STOP_SECONDS + 5,
            interval=0.5,
            message="the outage lasted",
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    assert nats.pid == pid  # stopped and resumed, never restarted: the hang itself was survived

    async def all_completed() -> bool:
        states = await _states(live, "acme", ids)
        return all(s == "completed" for s in states.values())

    await eventually(all_completed, timeout=180, interval=0.5, message="every task completed")
    for task_id in ids[:: TASKS // 40]:  # a sample of histories: each completed once
        shown = (await live.admin.get(f"/v1/orgs/acme/tasks/{task_id}")).json()
        assert [h["to"] for h in shown["history"]].count("completed") == 1, shown["history"]
    agents = await _agents(live, "acme")  # w1, w2 and any provisioned for the queue
    assert {a["state"] for a in agents} == {"running"}, agents
    assert {a["restarts"] for a in agents} == {0}, agents  # the bus's outage, not theirs
    usage = (await live.admin.get("/v1/orgs/acme")).json()["usage"]
    assert usage["pods"]["used"] == str(len(agents)), (usage, agents)


async def test_an_agent_that_exits_while_the_bus_is_down_is_restarted_without_a_crash_counted(
    live: Live,
) -> None:
    await live.org("acme")
    a = await live.agent("acme", "w", role="odd", command=AGENT)
    live.platform.controller.silence_limit = 600.0  # "lately" lasts the whole test
    health = live.platform.bus_health
    health.trouble("a test says so")  # as the probe says when the server does not answer
    t = await live.task("acme", agent=a["id"], payload={"op": "exit", "code": 3})
    health.answered()  # the task must reach the agent: the bus answers, though lately troubled

    async def restarted() -> dict[str, Any] | None:
        shown = (await live.admin.get(f"/v1/orgs/acme/agents/{a['id']}")).json()
        return shown if "not counted" in shown.get("detail", "") else None

    shown = await eventually(restarted, timeout=60, message="restarted, not counted")
    assert shown["restarts"] == 0, shown
    await eventually(lambda: _running(live, a["id"]), timeout=60, message="the agent running again")
    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["attempts"] >= 2, done  # the attempt its exit cost was retried


async def _running(live: Live, agent_id: str) -> bool:
    shown = (await live.admin.get(f"/v1/orgs/acme/agents/{agent_id}")).json()
    return bool(shown["state"] == "running")


async def test_an_agent_killed_while_the_bus_hangs_is_restarted_once_it_answers(
    live: Live,
) -> None:
    """The issue's own failure: a restart during the outage timed out creating the agent's
    inbox consumer, and the agent ended ``failed``, holding its quota."""
    await live.org("acme")
    a = await live.agent("acme", "w", role="odd", command=AGENT)
    before = the_agent(a["id"]).pid
    nats = live.platform.nats
    assert nats is not None and nats.pid is not None
    pid = nats.pid
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        await eventually(
            lambda: live.platform.bus_health.disturbed(), timeout=30, message="outage noticed"
        )
        os.kill(before, signal.SIGKILL)

        async def restarting() -> bool:
            shown = (await live.admin.get(f"/v1/orgs/acme/agents/{a['id']}")).json()
            return "the bus was unavailable; not counted" in shown["detail"]

        await eventually(restarting, timeout=30, message="a restart, not counted")
        # the outage's length is the stimulus: long enough for restarts to fail on it
        await eventually(
            lambda: time.monotonic() - stopped >= STOP_SECONDS,
            timeout=STOP_SECONDS + 5,
            interval=0.5,
            message="the outage lasted",
        )
        assert (await live.admin.get(f"/v1/orgs/acme/agents/{a['id']}")).json()[
            "state"
        ] == "provisioning"  # still being restarted, not failed
    finally:
        os.kill(pid, signal.SIGCONT)

    await eventually(lambda: _running(live, a["id"]), timeout=90, message="running again")
    shown = (await live.admin.get(f"/v1/orgs/acme/agents/{a['id']}")).json()
    assert shown["restarts"] == 0, shown
    assert the_agent(a["id"]).pid != before
    t = await live.task("acme", agent=a["id"], payload={"op": "echo"})
    assert (await live.wait_task("acme", t["id"], timeout=60))["state"] == "completed"
    usage = (await live.admin.get("/v1/orgs/acme")).json()["usage"]
    assert usage["pods"]["used"] == "1", usage
