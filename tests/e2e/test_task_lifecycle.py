"""The unhappy paths of a task, with real agent processes: handlers that raise, agents that
crash on a task every time, agents terminated under pinned work, cancellation reaching the
handler, timeouts, large results, exits with code 0."""

from __future__ import annotations

import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from corral.domain.errors import Conflict
from corral.domain.tasks import Priority, Requirements
from tests.e2e.conftest import Live
from tests.support import eventually

AGENT = [sys.executable, str(Path(__file__).with_name("lifecycle_agent.py"))]
FAST = {"initialBackoff": 0.05, "maxBackoff": 0.2}  # retries without waiting in a test


async def _agent(live: Live, org: str, name: str, **extra: Any) -> dict[str, Any]:
    return await live.agent(org, name, role=extra.pop("role", "odd"), command=AGENT, **extra)


async def _show(live: Live, org: str, task_id: str) -> dict[str, Any]:
    task: dict[str, Any] = (await live.admin.get(f"/v1/orgs/{org}/tasks/{task_id}")).json()
    return task


async def _agent_state(live: Live, org: str, agent_id: str) -> dict[str, Any]:
    agent: dict[str, Any] = (await live.admin.get(f"/v1/orgs/{org}/agents/{agent_id}")).json()
    return agent


async def _state_is(live: Live, org: str, task_id: str, state: str) -> dict[str, Any] | None:
    shown = await _show(live, org, task_id)
    return shown if shown["state"] == state else None


def _marker(live: Live, task_id: str, attempt: int = 1) -> str | None:
    found = list((live.data_dir / "agents").rglob(f"{task_id}.{attempt}"))
    return found[0].read_text() if found else None


# -- 1. retries and dead letters ---------------------------------------------------------------


async def test_a_handler_exception_is_retried_then_fails_with_the_error(live: Live) -> None:
    await live.org("acme")
    a = await _agent(live, "acme", "w")
    t = await live.task(
        "acme",
        agent=a["id"],
        payload={"op": "raise", "type": "ValueError"},
        retry={"maxAttempts": 3, **FAST},
    )
    done = await live.wait_task("acme", t["id"])
    assert done["state"] == "failed" and done["attempts"] == 3
    assert done["result"]["errorType"] == "ValueError"
    assert "attempt 3 went wrong" in done["result"]["reason"]
    retries = [h for h in done["history"] if h["to"] == "queued" and h["from"] == "running"]
    assert len(retries) == 2 and "ValueError" in retries[0]["detail"]
    assert "gave up (after 3 attempts)" in done["history"][-1]["detail"]

    healed = await live.task("acme", agent=a["id"], payload={"op": "raise", "until": 2}, retry=FAST)
    done = await live.wait_task("acme", healed["id"])
    assert done["state"] == "completed" and done["result"] == {"attempt": 2}


async def test_a_non_retryable_error_fails_at_once_and_blocked_is_never_retried(
    live: Live,
) -> None:
    await live.org("acme")
    a = await _agent(live, "acme", "w")
    t = await live.task(
        "acme",
        agent=a["id"],
        payload={"op": "raise", "type": "KeyError"},
        retry={"nonRetryable": ["KeyError"]},
    )
    done = await live.wait_task("acme", t["id"])
    assert done["state"] == "failed" and done["attempts"] == 1
    assert "not retryable" in done["history"][-1]["detail"]
    g = await live.agent("acme", "general")
    t = await live.task("acme", agent=g["id"], payload={"op": "fail", "reason": "no way"})
    done = await live.wait_task("acme", t["id"])
    assert done["state"] == "blocked" and done["attempts"] == 1


async def test_a_task_its_agent_crashes_on_every_time_ends_failed(live: Live) -> None:
    await live.org("acme")
    a = await _agent(live, "acme", "w")
    t = await live.task(
        "acme", agent=a["id"], payload={"op": "exit", "code": 3}, retry={"maxAttempts": 2, **FAST}
    )
    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["state"] == "failed" and done["attempts"] == 2
    assert "exited (code 3)" in done["result"]["reason"]
    # with the plan's policy, pinned: the agent is failed after its restarts, and so is the task
    t = await live.task("acme", agent=a["id"], payload={"op": "exit", "code": 3})
    done = await live.wait_task("acme", t["id"], timeout=90)
    assert done["state"] == "failed"
    assert f"agent {a['id']} is failed" in done["result"]["reason"]
    assert (await _agent_state(live, "acme", a["id"]))["state"] == "failed"


async def test_a_task_pinned_to_an_agent_that_is_terminated_fails_with_that_reason(
    live: Live,
) -> None:
    await live.org("acme")
    a = await _agent(live, "acme", "w")
    running = await live.task("acme", agent=a["id"], payload={"op": "sleep", "seconds": 30})
    await eventually(lambda: _state_is(live, "acme", running["id"], "running"), timeout=20)
    waiting = await live.task("acme", agent=a["id"], payload={"op": "echo"})
    r = await live.admin.delete(f"/v1/orgs/acme/agents/{a['id']}")
    assert r.status_code == 204, r.text
    for t in (running, waiting):
        done = await live.wait_task("acme", t["id"])
        assert done["state"] == "failed", done["history"]
        assert f"agent {a['id']} is terminated" in done["result"]["reason"]


async def test_crashes_not_in_a_row_do_not_fail_an_agent(live: Live) -> None:
    await live.org("acme")
    a = await _agent(live, "acme", "w")
    for _ in range(5):  # more crashes than its restarts, each followed by a completed task
        crash = await live.task(
            "acme", agent=a["id"], payload={"op": "exit"}, retry={"maxAttempts": 1}
        )
        assert (await live.wait_task("acme", crash["id"], timeout=30))["state"] == "failed"
        ok = await live.task("acme", agent=a["id"], payload={"op": "echo"})
        assert (await live.wait_task("acme", ok["id"], timeout=30))["state"] == "completed"
    assert (await _agent_state(live, "acme", a["id"]))["state"] == "running"


# -- 2. cancellation ----------------------------------------------------------------------------


async def test_cancel_stops_a_running_handler_and_the_next_task_runs(live: Live) -> None:
    await live.org("acme")
    a = await _agent(live, "acme", "w")
    long = await live.task("acme", agent=a["id"], payload={"op": "sleep", "seconds": 20})
    await eventually(lambda: _state_is(live, "acme", long["id"], "running"), timeout=20)
    nxt = await live.task("acme", agent=a["id"], payload={"op": "echo"})
    r = await live.admin.post(f"/v1/orgs/acme/tasks/{long['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    # the handler itself was cancelled (its marker), not merely left to finish
    done = await live.wait_task("acme", nxt["id"], timeout=60)
    assert done["state"] == "completed"
    assert _marker(live, long["id"]) == "cancelled"  # the handler's coroutine was cancelled
    assert (await _show(live, "acme", long["id"]))["state"] == "cancelled"


async def test_cancelling_a_parent_cancels_its_children(live: Live) -> None:
    await live.org("acme")
    await _agent(live, "acme", "boss", role="boss")
    await _agent(live, "acme", "w", role="odd")
    parent = await live.task(
        "acme",
        role="boss",
        priority="high",
        payload={"op": "delegate", "role": "odd", "payload": {"op": "sleep", "seconds": 20}},
    )

    async def child() -> dict[str, Any] | None:
        r = await live.admin.get("/v1/orgs/acme/tasks", params={"parent": parent["id"]})
        kids = r.json()["tasks"]
        return kids[0] if kids and kids[0]["state"] == "running" else None

    kid = await eventually(child, timeout=20, message="the child runs")
    assert kid["priority"] == "high"  # a child inherits its parent's priority
    await live.admin.post(f"/v1/orgs/acme/tasks/{parent['id']}/cancel")
    done = await live.wait_task("acme", kid["id"], timeout=60)
    assert done["state"] == "cancelled" and parent["id"] in done["result"]["reason"]
    await eventually(lambda: _marker(live, kid["id"]) == "cancelled", timeout=10)


# -- 3. timeouts --------------------------------------------------------------------------------


async def test_a_deadline_that_passes_while_running_ends_the_task_expired(live: Live) -> None:
    await live.org("acme")
    a = await _agent(live, "acme", "w")
    t = await live.task("acme", agent=a["id"], deadline="3s", payload={"op": "sleep", "seconds": 8})
    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["state"] == "expired"
    assert "deadline passed while it ran" in done["history"][-1]["detail"]
    await eventually(lambda: _marker(live, t["id"]) == "cancelled", timeout=10)
    after = await live.task("acme", agent=a["id"], payload={"op": "echo"})
    assert (await live.wait_task("acme", after["id"]))["state"] == "completed"


async def test_a_deadline_that_passes_while_the_platform_accepts_it_expires_not_refused(
    live: Live,
) -> None:
    """``deadline: 1s`` counts from the request's arrival: when the platform itself takes
    longer than that to accept the task (under load, say), the task is accepted and ends
    ``expired``, not refused as "past"; a deadline past when the request arrived is refused."""
    await live.org("acme")
    org = await live.platform.tenants.get("acme")
    arrived = datetime.now(UTC) - timedelta(seconds=2)  # the request came in 2 s ago

    def submit(deadline: datetime) -> Any:
        return live.platform.dispatcher.submit(
            org,
            role="nobody-serves-this",
            agent=None,
            priority=Priority.NORMAL,
            deadline=deadline,
            requirements=Requirements(),
            payload={"op": "echo"},
            received_at=arrived,
        )

    rec = await submit(arrived + timedelta(seconds=1))  # past now, not when it arrived
    done = await live.wait_task("acme", rec.id, timeout=60)
    assert done["state"] == "expired", done
    with pytest.raises(Conflict, match="already past"):
        await submit(arrived - timedelta(seconds=1))


async def test_run_and_heartbeat_timeouts_fail_an_attempt(live: Live) -> None:
    await live.org("acme")
    a = await _agent(live, "acme", "w")
    t = await live.task(
        "acme",
        agent=a["id"],
        runTimeout=2,
        retry={"maxAttempts": 1},
        payload={"op": "sleep", "seconds": 8},
    )
    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["state"] == "failed" and done["result"]["errorType"] == "RunTimeout"
    t = await live.task(
        "acme",
        agent=a["id"],
        heartbeatTimeout=2,
        retry={"maxAttempts": 1},
        payload={"op": "sleep", "seconds": 8, "beat": False},
    )
    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["state"] == "failed" and done["result"]["errorType"] == "HeartbeatTimeout"
    beating = await live.task(
        "acme",
        agent=a["id"],
        heartbeatTimeout=2,
        payload={"op": "sleep", "seconds": 3, "beat": True},
    )
    assert (await live.wait_task("acme", beating["id"], timeout=20))["state"] == "completed"


# -- 7. exits with code 0 (large results: test_big_documents.py) ---------------------------------------------------------


async def test_an_exit_with_code_0_is_an_exit_the_task_fails_and_the_agent_restarts(
    live: Live,
) -> None:
    await live.org("acme")
    a = await _agent(live, "acme", "w")
    t = await live.task(
        "acme", agent=a["id"], payload={"op": "exit", "code": 0}, retry={"maxAttempts": 1}
    )
    done = await live.wait_task("acme", t["id"], timeout=30)
    assert done["state"] == "failed" and "exited (code 0)" in done["result"]["reason"]

    async def back() -> bool:
        shown = await _agent_state(live, "acme", a["id"])
        return bool(shown["state"] == "running" and shown["restarts"] == 1)

    await eventually(back, timeout=30, message="the agent is restarted")
    after = await live.task("acme", agent=a["id"], payload={"op": "echo"})
    assert (await live.wait_task("acme", after["id"], timeout=30))["state"] == "completed"


async def test_the_checkpoint_file_is_the_agents_alone(live: Live) -> None:
    await live.org("acme")
    a = await live.agent("acme", "keeper")
    r = await live.admin.post(f"/v1/orgs/acme/agents/{a['id']}/pause")
    assert r.status_code == 200
    (found,) = list((live.data_dir / "agents").rglob(".corral-checkpoint.json"))
    assert stat.S_IMODE(found.stat().st_mode) == 0o600


async def test_a_result_that_comes_after_the_deadline_expires_the_task(live: Live) -> None:
    """Nothing looked at the deadline while the task ran (as when the control plane is down
    then, its agent running on to be adopted): the result, come too late, does not count."""
    await live.org("acme")
    a = await _agent(live, "acme", "w")
    live.platform.dispatcher.timeouts.check = lambda now: None
    t = await live.task("acme", agent=a["id"], deadline="1s", payload={"op": "sleep", "seconds": 2})
    done = await live.wait_task("acme", t["id"], timeout=60)
    assert done["state"] == "expired", done
    assert "deadline passed while it ran" in done["history"][-1]["detail"]
    after = await live.task("acme", agent=a["id"], payload={"op": "echo"})  # its slot is free
    assert (await live.wait_task("acme", after["id"]))["state"] == "completed"
