"""The reconciler repairs what no event announces, each planted here on a live platform: an
agent recorded ``running`` whose process is gone, and work held by an agent that is not
running. It looks every half second in these tests (10 s by default)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.api.server import running
from corral.domain.agents import AgentState
from tests.e2e.conftest import Live, agent_processes, live_settings
from tests.support import eventually

AGENT = [sys.executable, str(Path(__file__).with_name("lifecycle_agent.py"))]


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    data = tmp_path / "data"
    async with (
        running(live_settings(data, reconcile_seconds=0.5)) as srv,
        httpx.AsyncClient(
            base_url=srv.url,
            headers={"Authorization": f"Bearer {srv.platform.new_admin_key}"},
            timeout=30,
        ) as admin,
    ):
        yield Live(srv, admin, data)


async def _show(live: Live, what: str) -> dict[str, Any]:
    return (await live.admin.get(f"/v1/orgs/acme/{what}")).json()  # type: ignore[no-any-return]


async def _running_task(live: Live, **body: Any) -> dict[str, Any]:
    t = await live.task("acme", payload={"op": "sleep", "seconds": 3}, **body)

    async def started() -> bool:
        state: str = (await _show(live, f"tasks/{t['id']}"))["state"]
        return state == "running"

    await eventually(started, timeout=30, message="the task running")
    return t


async def test_an_agent_running_without_a_process_is_restarted_and_its_task_retried(
    live: Live,
) -> None:
    await live.org("acme")
    a = await live.agent("acme", "w", role="odd", command=AGENT)
    t = await _running_task(live, agent=a["id"])
    # planted: the process stopped the way nobody hears of (an asked-for stop reports no exit)
    await live.platform.runtime.stop("acme", a["id"], grace=0.5)
    assert not agent_processes(a["id"])
    assert (await _show(live, f"agents/{a['id']}"))["state"] == "running"

    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["state"] == "completed", done["history"]
    details = " ".join(h.get("detail", "") for h in done["history"])
    assert "it had no process" in details, done["history"]
    await eventually(lambda: agent_processes(a["id"]), timeout=30, message="a process again")
    assert (await _show(live, f"agents/{a['id']}"))["state"] == "running"


@pytest.mark.parametrize("state", [AgentState.PROVISIONING, AgentState.RESUMING])
async def test_an_agent_left_starting_without_a_process_is_started_again(
    live: Live, state: AgentState
) -> None:
    await live.org("acme")
    a = await live.agent("acme", "w", role="odd", command=AGENT)
    # planted: a start that failed and left the agent starting, with no process and nothing
    # scheduled (what a relaunch at start-up left when the bus did not answer)
    await live.platform.runtime.stop("acme", a["id"], grace=0.5)
    await live.platform.agents.transition(a["id"], expect=[AgentState.RUNNING], to=state)
    assert not agent_processes(a["id"])

    async def back() -> dict[str, Any] | None:
        shown = await _show(live, f"agents/{a['id']}")
        assert shown["state"] != "failed", shown
        return shown if shown["state"] == "running" and agent_processes(a["id"]) else None

    await eventually(back, timeout=60, message="running again")
    t = await live.task("acme", agent=a["id"], payload={"op": "echo"})
    assert (await live.wait_task("acme", t["id"], timeout=60))["state"] == "completed"


async def test_an_agent_left_pausing_without_a_process_is_paused(live: Live) -> None:
    await live.org("acme")
    a = await live.agent("acme", "w", role="odd", command=AGENT)
    # planted: a pause whose finishing failed after a restart (the bus did not answer), with
    # nothing to try it again
    await live.platform.runtime.stop("acme", a["id"], grace=0.5)
    await live.platform.agents.transition(
        a["id"], expect=[AgentState.RUNNING], to=AgentState.PAUSING
    )

    async def paused() -> bool:
        state: str = (await _show(live, f"agents/{a['id']}"))["state"]
        return state == "paused"

    await eventually(paused, timeout=60, message="paused")
    assert (await live.admin.post(f"/v1/orgs/acme/agents/{a['id']}/resume")).status_code == 200
    t = await live.task("acme", agent=a["id"], payload={"op": "echo"})
    assert (await live.wait_task("acme", t["id"], timeout=60))["state"] == "completed"


async def test_work_held_by_an_agent_that_is_not_running_is_retried_elsewhere(
    live: Live,
) -> None:
    await live.org("acme")
    agents = [await live.agent("acme", name, role="odd", command=AGENT) for name in ("w1", "w2")]
    t = await _running_task(live, role="odd")
    holder = (await _show(live, f"tasks/{t['id']}"))["assignedAgent"]
    (other,) = [x["id"] for x in agents if x["id"] != holder]
    # planted: the holder stopped and recorded paused behind the dispatcher's back, which
    # still counts the task as the holder's
    await live.platform.runtime.stop("acme", holder, grace=0.5)
    moved = await live.platform.agents.transition(
        holder, expect=[AgentState.RUNNING], to=AgentState.PAUSED
    )
    assert moved
    assert live.platform.dispatcher.current_task(holder) == t["id"]

    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["state"] == "completed", done["history"]
    assert done["assignedAgent"] == other, done
    details = " ".join(h.get("detail", "") for h in done["history"])
    assert f"agent {holder} is paused" in details, done["history"]
    assert live.platform.dispatcher.current_task(holder) is None
