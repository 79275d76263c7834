"""``/v1/orgs/{org}/tasks``"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ConfigDict, Field, TypeAdapter

from corral.api import access, answers
from corral.api.auth import Caller, caller, org_scope, platform
from corral.api.schemas import (
    AGENT_ID,
    DURATION,
    LABEL30,
    QUANTITY,
    Strict,
    exactly_one_of,
    strip_nulls,
)
from corral.control import tracing
from corral.control.dispatch import Submission
from corral.control.platform import Platform
from corral.domain.budgets import Budget
from corral.domain.errors import CorralError, InvalidInput
from corral.domain.ids import new_task_id
from corral.domain.models import parse_dollars
from corral.domain.objects import too_large
from corral.domain.policies import MAX_ATTEMPTS_LIMIT, MAX_SECONDS, TaskPolicy
from corral.domain.quantities import parse
from corral.domain.tasks import Priority, Requirements, TaskFilter, TaskState
from corral.domain.tenancy import Organization

__all__ = ["parse_deadline", "router"]

router = APIRouter(prefix="/v1/orgs/{org}/tasks")
_ONE_STATE = "|".join(s.value for s in TaskState)
_STATES = f"^({_ONE_STATE})(,({_ONE_STATE}))*$"
_ONE_PRIORITY = "|".join(p.value for p in Priority)
_PRIORITIES = f"^({_ONE_PRIORITY})(,({_ONE_PRIORITY}))*$"
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


#: a duration in seconds, as the API takes one (the CLI also reads ``30s``, ``10m``, ``2h``)
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]


class RetryIn(Strict):
    max_attempts: int | None = Field(default=None, alias="maxAttempts", ge=1, le=MAX_ATTEMPTS_LIMIT)
    initial_backoff: Seconds | None = Field(
        default=None, alias="initialBackoff", description="capped at maxBackoff"
    )
    max_backoff: Seconds | None = Field(default=None, alias="maxBackoff")
    multiplier: float | None = Field(default=None, ge=1, le=100, allow_inf_nan=False)
    non_retryable: (
        list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")]] | None
    ) = Field(default=None, alias="nonRetryable", max_length=32)


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
    retry: RetryIn | None = Field(default=None, description="overrides of the plan's retries")
    run_timeout: Seconds | None = Field(
        default=None, alias="runTimeout", description="seconds from dispatch to end"
    )
    heartbeat_timeout: Seconds | None = Field(
        default=None, alias="heartbeatTimeout", description="longest silence between progress (s)"
    )
    idempotency_key: str | None = Field(
        default=None,
        alias="idempotencyKey",
        min_length=1,
        max_length=128,
        description="the same key answers with the task it created the first time",
    )

    def policy(self, base: TaskPolicy) -> TaskPolicy:
        """The task's policy: ``base`` (its plan's) with what this body overrides."""
        over: dict[str, Any] = {}
        if self.retry is not None:
            over["retry"] = self.retry.model_dump(by_alias=True, exclude_none=True)
        if self.run_timeout is not None:
            over["runTimeout"] = self.run_timeout
        if self.heartbeat_timeout is not None:
            over["heartbeatTimeout"] = self.heartbeat_timeout
        return TaskPolicy.from_wire(over, base=base)


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


@router.post("", status_code=201, response_model=answers.Task, response_model_exclude_unset=True)
async def submit(body: TaskCreate, org: Org, request: Request) -> dict[str, Any]:
    # the task's trace starts in this request (or the caller's ``traceparent``): its dispatch
    # and its handlers' spans join it
    with tracing.submitting(request.headers, org=org.slug) as span:
        access.note_trace(request.scope)
        created = (await _submit([body], org, request))[0]
        span.set_attribute("corral.task", created["id"])
        return created


#: the most tasks one batch may carry
MAX_BATCH = 1000
#: a batch counts against the org's request rate as one request per this many tasks
TASKS_PER_REQUEST = 100


class TaskBatch(Strict):
    tasks: list[TaskCreate] = Field(min_length=1, max_length=MAX_BATCH)


@router.post(
    "/batch",
    status_code=201,
    response_model=answers.TaskBatch,
    response_model_exclude_unset=True,
)
async def submit_batch(
    body: TaskBatch, org: Org, who: Annotated[Caller, Depends(caller)], request: Request
) -> dict[str, Any]:
    """Up to 1,000 tasks at once, each as ``POST tasks`` takes it: every one is checked before
    any is accepted (an error names the item, from 0, and nothing is accepted) and they are
    committed together. The answer lists the tasks in the order given (an idempotency key
    made before answers with its task). It counts against the plan's request rate as one
    request per 100 tasks."""
    # one request of the plan's rate per TASKS_PER_REQUEST tasks (the first was taken already)
    extra = (len(body.tasks) - 1) // TASKS_PER_REQUEST
    if extra and not who.is_admin:
        request.app.state.limiter.check(org.slug, org.plan, cost=extra)
    with tracing.submitting(request.headers, org=org.slug) as span:
        access.note_trace(request.scope)
        created = await _submit(body.tasks, org, request)
        span.set_attribute("corral.tasks", len(created))
        return {"tasks": created}


Undo = Callable[[], Awaitable[None]]


async def _submit(
    bodies: list[TaskCreate], org: Organization, request: Request
) -> list[dict[str, Any]]:
    p = platform(request)
    received_at = datetime.now(UTC)  # a relative deadline counts from the request's arrival
    subs: list[Submission] = []
    undos: list[Undo] = []
    try:
        for n, body in enumerate(bodies):
            try:
                sub, undo = await _prepare(p, org, body, received_at)
            except CorralError as exc:
                raise exc.of_item(n, len(bodies)) from None
            subs.append(sub)
            undos.append(undo)
        recs = await p.dispatcher.submit_many(org, subs)
    except BaseException:
        for undo in undos:
            await undo()
        raise
    for sub, undo, rec in zip(subs, undos, recs, strict=True):
        if rec.id != sub.task_id:  # the key named a task made before
            await undo()
    return [rec.to_wire() for rec in recs]


async def _prepare(
    p: Platform, org: Organization, body: TaskCreate, received_at: datetime
) -> tuple[Submission, Undo]:
    """``body`` checked, its large payload stored and its budget set: the submission, and how
    to take back what was done for it."""
    deadline = parse_deadline(body.deadline, now=received_at)
    size = len(json.dumps(body.payload, separators=(",", ":")))
    limit = min(p.settings.max_payload_bytes, org.plan.max_document_bytes)
    if size > limit:  # the plan's maximum, or this platform's if lower
        raise too_large("the payload", size, limit)
    if body.role is not None:
        from corral.domain.agents import validate_name

        validate_name("role", body.role)
    reqs = Requirements(
        cpu=parse(body.requirements.cpu) if body.requirements.cpu else None,
        memory=parse(body.requirements.memory) if body.requirements.memory else None,
        gpu=body.requirements.gpu,
    )
    task_id = new_task_id()
    policy = body.policy(_defaults(p, org, body.role))
    # a payload one bus message cannot carry is kept in the org's object store first
    payload = await p.documents.accept_payload(org, task_id, body.payload)
    unbudget: Undo | None = None

    async def undo() -> None:
        if unbudget is not None:
            await unbudget()
        if payload is not body.payload:
            await p.documents.discard(org, task_id)

    if body.max_tokens is not None or body.max_cost is not None:
        try:
            cost = None if body.max_cost is None else parse_dollars(body.max_cost, what="maxCost")
            unbudget = await p.models.set_task_budget(org, task_id, Budget(body.max_tokens, cost))
        except BaseException:
            await undo()
            raise
    sub = Submission(
        role=body.role,
        agent=body.agent,
        priority=Priority.parse(body.priority),
        deadline=deadline,
        requirements=reqs,
        payload=payload,
        policy=policy,
        idempotency_key=body.idempotency_key,
        task_id=task_id,
        received_at=received_at,
    )
    return sub, undo


def _states(text: str) -> tuple[TaskState, ...]:
    try:
        return tuple(TaskState(s.strip()) for s in text.split(",") if s.strip())
    except ValueError:
        raise InvalidInput(
            f"unknown state in {text!r}: use {', '.join(s.value for s in TaskState)}",
            details={"state": text},
        ) from None


_PAGE = TypeAdapter(dict[str, Any])


@router.get("", response_model=answers.TaskPage)
async def list_tasks(
    org: Org,
    request: Request,
    state: Annotated[
        str | None,
        Query(
            max_length=200,
            json_schema_extra={"pattern": _STATES},
            description="one state, or several: a,b,c",
        ),
    ] = None,
    role: Annotated[
        str | None, Query(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    ] = None,
    agent: Annotated[
        str | None, Query(max_length=128, pattern=AGENT_ID, description="sent to or run by")
    ] = None,
    priority: Annotated[
        str | None,
        Query(
            max_length=64,
            json_schema_extra={"pattern": _PRIORITIES},
            description="one priority, or several: a,b",
        ),
    ] = None,
    parent: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=r"^[0-8]?[0-9]{1,18}\.[A-Za-z0-9_]{1,64}$",
            description="the nextCursor of the page before",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> Response:
    """The org's tasks, newest first, a page at a time: pass ``nextCursor`` back as
    ``cursor`` for the next page (it is null on the last)."""
    where = TaskFilter(
        states=_states(state) if state else None,
        role=role,
        agent=agent,
        priorities=tuple(Priority.parse(p.strip()) for p in priority.split(",") if p.strip())
        if priority
        else None,
        parent=parent,
    )
    recs, next_cursor = await platform(request).dispatcher.find_tasks(
        org, where=where, cursor=cursor, limit=limit
    )
    page = {"tasks": [r.to_wire() for r in recs], "nextCursor": next_cursor}
    # a page of up to 10,000 tasks: rendered as it is, not checked against TaskPage on the
    # way out (that costs about 4x the rendering's CPU, on the event loop every tenant
    # shares); TaskPage documents it, and the tests read pages back through it
    return Response(_PAGE.dump_json(page), media_type="application/json")


@router.get("/{task}", response_model=answers.TaskDetail, response_model_exclude_unset=True)
async def show(task: str, org: Org, request: Request) -> dict[str, Any]:
    p = platform(request)
    rec, history, waiting = await p.dispatcher.get_task(org, task)
    shown = rec.to_wire(history)
    for key in ("payload", "result"):  # a reference to the object store: the document itself
        shown[key] = await p.documents.resolve(org, shown.get(key))
    return {
        **shown,
        "waiting": waiting,
        "modelUsage": await p.models.task_usage(org, rec.id),
    }


@router.post("/{task}/cancel", response_model=answers.Task, response_model_exclude_unset=True)
async def cancel(task: str, org: Org, request: Request) -> dict[str, Any]:
    return (await platform(request).dispatcher.cancel(org, task)).to_wire()


def _defaults(p: Platform, org: Organization, role: str | None) -> TaskPolicy:
    """A task's defaults: its plan's, with its declared role's task defaults over them."""
    declared = p.roles.role(org.id, role)
    base = org.plan.task_policy
    return declared.policy(base) if declared is not None else base
