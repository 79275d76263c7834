"""The answer models describe the wire without changing it: what a service renders comes out
of a route declaring its answer model byte for byte (names, order, number types, nulls,
absent fields, fields the model does not name), and the client reads it back typed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from corral.api import answers
from corral.api.schemas import org_to_wire
from corral.domain.admission import AdmittedResources
from corral.domain.agents import Agent, AgentState
from corral.domain.ids import AgentId, OrgId, OrgSlug
from corral.domain.plans import PLANS
from corral.domain.quantities import parse
from corral.domain.secrets import SecretInfo
from corral.domain.tasks import Priority, TaskState
from corral.domain.tenancy import Organization
from corral.store.tasks import TaskRecord, Transition

NOW = datetime(2026, 12, 6, 5, 0, 1, 250_000, tzinfo=UTC)


def _agent() -> dict[str, Any]:
    res = AdmittedResources(parse("500m"), parse("2"), parse("1Gi"), parse("2Gi"))
    agent = Agent(
        AgentId("agent-acme-w-1a2b3c"), "org_acme", "acme", "w", "worker", AgentState.RUNNING,
        res, ("python", "a.py"), None, 0, None, NOW, NOW, last_seen_at=NOW,
    )  # fmt: skip
    return agent.to_wire()


def _task(progress: float | int | None) -> dict[str, Any]:
    rec = TaskRecord(
        id="task_1", seq=1, org_id="org_acme", org="acme", plan="standard", role="worker",
        target_agent=None, agent_id="agent-acme-w-1a2b3c", parent_id=None, from_agent=None,
        priority=Priority.HIGH, deadline=NOW, requirements={"gpu": 0},
        payload={"n": 1, "x": 1.0, "nested": {"a": [1, None, "b"]}}, result=None,
        state=TaskState.RUNNING, attempts=1, progress=progress, not_before=None,
        created_at=NOW, updated_at=NOW, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    )  # fmt: skip
    history = [Transition(None, "queued", NOW, ""), Transition("queued", "running", NOW, "x")]
    return rec.to_wire(history)


def _org() -> dict[str, Any]:
    return org_to_wire(Organization(OrgId("org_acme"), OrgSlug("acme"), PLANS["free"], NOW))


WIRES: list[tuple[type[answers.Answer], dict[str, Any]]] = [
    (answers.Agent, _agent()),
    (answers.Agent, {**_agent(), "sandbox": "best-effort (missing: seccomp)", "later": True}),
    (answers.Task, _task(1)),
    (answers.Task, _task(0.5)),
    (answers.Task, {k: v for k, v in _task(None).items() if k != "history"}),
    (answers.TaskDetail, {**_task(None), "waiting": "no agent", "modelUsage": {"tokens": 0}}),
    (answers.Org, _org()),
    (answers.CreatedOrg, {**_org(), "apiKey": "crl_x"}),
    (answers.Secret, SecretInfo("token", 2, NOW, NOW).to_wire()),
    (answers.OrgPage, {"orgs": [_org()], "nextCursor": None}),
]


@pytest.mark.parametrize(
    ("model", "wire"), WIRES, ids=[f"{m.__name__}-{i}" for i, (m, _) in enumerate(WIRES)]
)
def test_an_answer_read_back_renders_the_same_json(
    model: type[answers.Answer], wire: dict[str, Any]
) -> None:
    read = model.model_validate(wire)
    assert json.dumps(read.to_wire()) == json.dumps(wire)


async def test_a_route_declaring_its_answer_model_answers_what_the_service_rendered() -> None:
    app = FastAPI()
    wires = {"agent": _agent(), "task": {**_task(1), "surprise": [1]}}

    @app.get("/agent", response_model=answers.Agent, response_model_exclude_unset=True)
    async def agent() -> dict[str, Any]:
        return wires["agent"]

    @app.get("/task", response_model=answers.Task, response_model_exclude_unset=True)
    async def task() -> dict[str, Any]:
        return wires["task"]

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for name, wire in wires.items():
            resp = await client.get(f"/{name}")
            assert resp.status_code == 200
            assert resp.text == json.dumps(wire, separators=(",", ":")), name


def test_answers_are_typed_frozen_and_name_a_missing_field() -> None:
    task = answers.Task.model_validate(_task(1))
    assert task.state is TaskState.RUNNING and task.priority is Priority.HIGH
    assert task.progress == 1 and isinstance(task.progress, int)
    assert task.history is not None and task.history[0].from_state is None
    assert task.trace_id == "a" * 32
    with pytest.raises(ValueError, match="frozen"):
        task.state = TaskState.COMPLETED  # type: ignore[misc]
    broken = {k: v for k, v in _agent().items() if k != "state"}
    with pytest.raises(ValueError, match="state"):
        answers.Agent.model_validate(broken)
