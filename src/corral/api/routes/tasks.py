"""``/v1/orgs/{org}/tasks``"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict, Field

from corral.api.auth import org_scope, platform
from corral.api.schemas import (
    AGENT_ID,
    DURATION,
    LABEL30,
    QUANTITY,
    Strict,
    exactly_one_of,
    strip_nulls,
)
from corral.domain.budgets import Budget
from corral.domain.errors import InvalidInput
from corral.domain.ids import new_task_id
from corral.domain.models import parse_dollars
from corral.domain.quantities import parse
from corral.domain.tasks import Priority, Requirements, TaskState
from corral.domain.tenancy import Organization

__all__ = ["parse_deadline", "router"]

router = APIRouter(prefix="/v1/orgs/{org}/tasks")
_ONE_STATE = "|".join(s.value for s in TaskState)
_STATES = f"^({_ONE_STATE})(,({_ONE_STATE}))*$"
Org = Annotated[Organization, Depends(org_scope)]


class RequirementsIn(Strict):
    cpu: str | None = Field(default=None, max_length=32, json_schema_extra={"pattern": QUANTITY})
    memory: str | None = Field(default=None, max_length=32, json_schema_extra={"pattern": QUANTITY})
    gpu: int = Field(default=0, ge=0, le=16)


def _deadline_schema(schema: dict[str, Any]) -> None:
    strip_nulls(schema)
    schema.update(exactly_one_of("role", "agent"))
    schema["properties"]["deadline"] = {
        "description": "a duration from now (30s, 10m, 2h, 1d) or an RFC 3339 time",
        "anyOf": [
            {"type": "string", "pattern": DURATION, "maxLength": 64},
            {"type": "string", "format": "date-time", "maxLength": 64},
        ],
    }


class TaskCreate(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_deadline_schema)

    role: str | None = Field(default=None, max_length=30, json_schema_extra={"pattern": LABEL30})
    agent: str | None = Field(default=None, max_length=128, json_schema_extra={"pattern": AGENT_ID})
    priority: str = Field(default="normal", json_schema_extra={"enum": [p.value for p in Priority]})
    deadline: str | None = Field(default=None, max_length=64)
    requirements: RequirementsIn = Field(default_factory=RequirementsIn)
    payload: dict[str, Any] = Field(default_factory=dict)
    max_tokens: int | None = Field(
        default=None,
        alias="maxTokens",
        strict=True,
        ge=0,
        le=10**15,
        description="model tokens it and its delegated children may use",
    )
    max_cost: str | None = Field(
        default=None,
        alias="maxCost",
        strict=True,
        description="dollars of model calls it and its delegated children may spend",
        json_schema_extra={"pattern": r"^[0-9]{1,6}(\.[0-9]{1,12})?$"},
    )


def parse_deadline(text: str | None, *, now: datetime | None = None) -> datetime | None:
    """``10m``/``2h``/``30s``/``1d`` from now, or an ISO-8601 time (UTC if no zone)."""
    if text is None:
        return None
    now = now or datetime.now(UTC)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    if t[:-1].replace(".", "", 1).isdigit() and t[-1:] in units:
        return now + timedelta(seconds=float(t[:-1]) * units[t[-1]])
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"invalid deadline {text!r}: use a duration like 10m or an ISO-8601 time",
            details={"deadline": text},
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@router.post("", status_code=201)
async def submit(body: TaskCreate, org: Org, request: Request) -> dict[str, Any]:
    p = platform(request)
    size = len(json.dumps(body.payload))
    if size > p.settings.max_payload_bytes:
        raise InvalidInput(
            f"payload is {size} bytes; the limit is {p.settings.max_payload_bytes}",
            details={"size": size, "limit": p.settings.max_payload_bytes},
        )
    if body.role is not None:
        from corral.domain.agents import validate_name

        validate_name("role", body.role)
    reqs = Requirements(
        cpu=parse(body.requirements.cpu) if body.requirements.cpu else None,
        memory=parse(body.requirements.memory) if body.requirements.memory else None,
        gpu=body.requirements.gpu,
    )
    task_id, unbudget = None, None
    if body.max_tokens is not None or body.max_cost is not None:
        task_id = new_task_id()
        cost = None if body.max_cost is None else parse_dollars(body.max_cost, what="maxCost")
        unbudget = await p.models.set_task_budget(org, task_id, Budget(body.max_tokens, cost))
    try:
        rec = await p.dispatcher.submit(
            org,
            role=body.role,
            agent=body.agent,
            priority=Priority.parse(body.priority),
            deadline=parse_deadline(body.deadline),
            requirements=reqs,
            payload=body.payload,
            task_id=task_id,
        )
    except BaseException:
        if unbudget is not None:
            await unbudget()
        raise
    return rec.to_wire()


@router.get("")
async def list_tasks(
    org: Org,
    request: Request,
    state: Annotated[
        str | None,
        Query(max_length=200, pattern=_STATES, description="one state, or several: a,b,c"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> dict[str, Any]:
    states = None
    if state is not None:
        try:
            states = [TaskState(s) for s in state.split(",")]
        except ValueError:
            raise InvalidInput(
                f"unknown state in {state!r}: use {', '.join(s.value for s in TaskState)}"
            ) from None
    recs = await platform(request).dispatcher.find_tasks(org, states=states, limit=limit)
    return {"tasks": [r.to_wire() for r in recs]}


@router.get("/{task}")
async def show(task: str, org: Org, request: Request) -> dict[str, Any]:
    p = platform(request)
    rec, history = await p.dispatcher.get_task(org, task)
    return {**rec.to_wire(history), "modelUsage": await p.models.task_usage(org, rec.id)}


@router.post("/{task}/cancel")
async def cancel(task: str, org: Org, request: Request) -> dict[str, Any]:
    return (await platform(request).dispatcher.cancel(org, task)).to_wire()
