"""An agent is ``failed`` only after crashes in a row that are its own: a killed fork server
takes its agents with it, and that is not their crash."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from tests.e2e.conftest import Live, agent_processes
from tests.support import eventually


async def _agent(live: Live, agent_id: str) -> dict[str, Any]:
    return (await live.admin.get(f"/v1/orgs/acme/agents/{agent_id}")).json()  # type: ignore[no-any-return]


async def test_agents_killed_with_their_fork_server_restart_without_a_crash_counted(
    live: Live,
) -> None:
    await live.org("acme")
    a = await live.agent("acme", "w")  # the default agent program: forked by the fork server
    for round_ in range(4):  # more than the restarts an agent may have in a row
        zygote = live.platform.runtime.zygote_pid("acme")
        assert zygote is not None, "the agent was not forked from a fork server"
        before = {p.pid for p in agent_processes(a["id"])}
        os.kill(zygote, signal.SIGKILL)

        async def back(before: set[int] = before) -> dict[str, Any] | None:
            shown = await _agent(live, a["id"])
            pids = {p.pid for p in agent_processes(a["id"])}
            fresh = shown["state"] == "running" and pids and not pids & before
            return shown if fresh else None

        shown = await eventually(back, timeout=60, message=f"running again ({round_ + 1})")
        assert shown["restarts"] == 0, shown
    t = await live.task("acme", agent=a["id"], payload={"op": "echo"})
    assert (await live.wait_task("acme", t["id"]))["state"] == "completed"


async def test_one_hang_reported_twice_at_once_restarts_the_agent_once(live: Live) -> None:
    """A hung agent is found by two watchers at the same moment (its handler would not stop,
    and its heartbeat is lost): one restart, counted once, never ``failed`` because the second
    found the first's process running."""
    await live.org("acme")
    a = await live.agent("acme", "w")
    before = {p.pid for p in agent_processes(a["id"])}
    controller = live.platform.controller
    org = await live.platform.tenants.get("acme")
    await asyncio.gather(
        controller.restart_hung(org, a["id"], "a handler would not stop"),
        controller.restart_hung(org, a["id"], "heartbeat lost"),
    )

    async def back() -> dict[str, Any] | None:
        shown = await _agent(live, a["id"])
        assert shown["state"] != "failed", shown
        pids = {p.pid for p in agent_processes(a["id"])}
        return shown if shown["state"] == "running" and pids and not pids & before else None

    shown = await eventually(back, timeout=60, message="running again")
    assert shown["detail"].endswith("(1/3)"), shown
    t = await live.task("acme", agent=a["id"], payload={"op": "echo"})
    assert (await live.wait_task("acme", t["id"]))["state"] == "completed"
