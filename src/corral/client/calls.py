"""The client's calls, each built once for the sync and the async client: a :class:`Call`
(method, path, body, query) whose body went through the API's own request models, so what
the server would refuse for its shape is refused here first, with the same words, and which
knows how its answer reads back (into the API's answer models, :mod:`corral.api.answers`).

Each builder below is one method of both clients, with the builder's signature and
docstring; the clients only send."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from corral.api import answers
from corral.domain import errors, wire

# The API's request models are imported where a call is built, not here: they bring the
# server's imports along (seconds), and a client that only sends ``request()``s (the CLI)
# should not wait for them. The answer models are pydantic alone.

__all__ = ["JSON", "TERMINAL_STATES", "Call", "answer", "body_of", "path", "unreachable"]

#: a JSON object as the API answers it
JSON = dict[str, Any]
#: the states a task ends in
TERMINAL_STATES = frozenset({"completed", "blocked", "failed", "cancelled", "expired"})

T = TypeVar("T")


def _as_is(body: Any) -> Any:
    return body


@dataclasses.dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request of the API and how its answer's JSON becomes what the caller gets."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] | None = None
    timeout: float | None = None  # this call's own, when it waits on the server's side
    read: Callable[[Any], T] = _as_is


def path(*parts: str) -> str:
    """``/v1/{parts...}`` with each part quoted as one path segment."""
    return "/v1/" + "/".join(quote(p, safe="") for p in parts)


def body_of(model: type[BaseModel], fields: Mapping[str, Any]) -> JSON:
    """``fields`` (by their wire names; None means omitted) checked by the API's model.

    Raises:
        InvalidInput: what the API would refuse, said the way pydantic says it.
    """
    given = {k: v for k, v in fields.items() if v is not None}
    try:
        checked = model.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise errors.InvalidInput(f"invalid {model.__name__}: {problems}") from exc
    return dict(checked.model_dump(mode="json", by_alias=True, exclude_none=True))


def answer(resp: httpx.Response) -> Any:
    """The JSON of a successful answer (None for 204; text for a text answer).

    Raises:
        CorralError: the error of the tree the API answered (RateLimited with its
            ``retry_after``).
    """
    if resp.status_code == 204:
        return None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code >= 400:
        error = wire.error_from_wire(body, message=f"HTTP {resp.status_code}")
        if resp.status_code == 429 and not isinstance(error, errors.RateLimited):
            retry_after = float(resp.headers.get("Retry-After", 1))
            raise errors.RateLimited(error.message, retry_after=retry_after)
        raise error
    return resp.text if body is None else body


def unreachable(url: str, call: Call[Any], exc: httpx.HTTPError) -> errors.Unavailable:
    """What a transport failure means to the caller: the API is not there, or slow."""
    if isinstance(exc, httpx.TimeoutException):
        return errors.Unavailable(
            f"the Corral API at {url} did not answer {call.method} {call.path} in time"
        )
    return errors.Unavailable(
        f"cannot reach the Corral API at {url}: {exc}. Is `corral up` running?"
    )


#: what the client waits for an answer to a call that waits itself (``wait=True``)
WAIT_TIMEOUT = 60.0


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _none(_: Any) -> None:
    return None


def _text(body: Any) -> str:
    return str(body)


# -- organizations ----------------------------------------------------------------------------
def create_org(name: str, *, plan: str | None = None) -> Call[answers.CreatedOrg]:
    """Create an organization (an admin key); the answer carries its API key
    (``api_key``), shown this once."""
    from corral.api.schemas import OrgCreate

    body = body_of(OrgCreate, {"name": name, "plan": plan})
    return Call("POST", "/v1/orgs", json=body, read=answers.CreatedOrg.model_validate)


def list_orgs(*, cursor: str | None = None, limit: int | None = None) -> Call[list[answers.Org]]:
    """A page of organizations by name (an org key sees its own); ``cursor`` is the name of
    the last one of the page before."""
    params = {k: v for k, v in {"cursor": cursor, "limit": limit}.items() if v is not None}
    return Call(
        "GET", "/v1/orgs", params=params, read=lambda b: answers.OrgPage.model_validate(b).orgs
    )


def get_org(org: str) -> Call[answers.OrgDetail]:
    """One organization, with its quota in use."""
    return Call("GET", path("orgs", org), read=answers.OrgDetail.model_validate)


def org_usage(org: str) -> Call[answers.Usage]:
    """The org's quota (hard and used), agents and tasks by state, measured use and model
    usage of this period."""
    return Call("GET", path("orgs", org, "usage"), read=answers.Usage.model_validate)


# -- agents -----------------------------------------------------------------------------------
def provision_agent(
    org: str,
    *,
    name: str,
    role: str | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    cpu_limit: str | None = None,
    memory_limit: str | None = None,
    gpu: int | None = None,
    command: list[str] | None = None,
    slots: int | None = None,
    wait: bool = False,
) -> Call[answers.Agent]:
    """Provision an agent; with ``wait``, answer once it is running.

    Raises:
        Unavailable: (with ``wait``) it exited before it was ready; the message carries
            the last lines of its log.
        QuotaExceeded: the org's quota or agent limit has no room for it.
    """
    from corral.api.routes.agents import AgentCreate

    fields = {
        "name": name,
        "role": role,
        "cpu": cpu,
        "memory": memory,
        "cpuLimit": cpu_limit,
        "memoryLimit": memory_limit,
        "gpu": gpu,
        "command": command,
        "slots": slots,
        "wait": wait,
    }
    return Call(
        "POST",
        path("orgs", org, "agents"),
        json=body_of(AgentCreate, fields),
        timeout=WAIT_TIMEOUT if wait else None,
        read=answers.Agent.model_validate,
    )


def list_agents(
    org: str, *, state: str | None = None, terminated: bool = False
) -> Call[list[answers.Agent]]:
    """The org's agents (with ``terminated``, the terminated ones kept as history too)."""
    params: JSON = {"state": state} if state else {}
    if terminated:
        params["terminated"] = "true"
    return Call(
        "GET",
        path("orgs", org, "agents"),
        params=params,
        read=lambda b: answers.AgentList.model_validate(b).agents,
    )


def get_agent(org: str, agent: str) -> Call[answers.Agent]:
    """One agent, by id or name."""
    return Call("GET", path("orgs", org, "agents", agent), read=answers.Agent.model_validate)


def pause_agent(org: str, agent: str, *, force: bool = False) -> Call[answers.Agent]:
    """Pause an agent (its workspace is kept); ``force`` even while it runs a task."""
    return Call(
        "POST",
        path("orgs", org, "agents", agent, "pause"),
        params={"force": _flag(force)},
        read=answers.Agent.model_validate,
    )


def resume_agent(org: str, agent: str, *, wait: bool = False) -> Call[answers.Agent]:
    """Resume a paused agent; with ``wait``, answer once it runs."""
    return Call(
        "POST",
        path("orgs", org, "agents", agent, "resume"),
        params={"wait": _flag(wait)},
        timeout=WAIT_TIMEOUT if wait else None,
        read=answers.Agent.model_validate,
    )


def terminate_agent(org: str, agent: str, *, keep_workspace: bool = False) -> Call[None]:
    """Terminate an agent (its workspace is deleted unless ``keep_workspace``)."""
    return Call(
        "DELETE",
        path("orgs", org, "agents", agent),
        params={"keep_workspace": _flag(keep_workspace)},
        read=_none,
    )


def agent_logs(org: str, agent: str, *, tail: int = 200) -> Call[str]:
    """The last ``tail`` lines of the agent's log."""
    return Call(
        "GET",
        path("orgs", org, "agents", agent, "logs"),
        params={"tail": tail},
        read=lambda b: answers.AgentLogs.model_validate(b).logs,
    )


# -- tasks ------------------------------------------------------------------------------------
def submit_task(
    org: str,
    *,
    role: str | None = None,
    agent: str | None = None,
    payload: Mapping[str, Any] | None = None,
    priority: str | None = None,
    deadline: str | None = None,
    requirements: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    **more: Any,
) -> Call[answers.Task]:
    """Submit a task for exactly one of ``role`` or ``agent``; ``more`` takes the body's
    other fields by their wire names (``retry``, ``runTimeout``, ``maxTokens``)."""
    from corral.api.routes.tasks import TaskCreate

    fields = {
        "role": role,
        "agent": agent,
        "payload": dict(payload) if payload is not None else None,
        "priority": priority,
        "deadline": deadline,
        "requirements": dict(requirements) if requirements is not None else None,
        "idempotencyKey": idempotency_key,
        **more,
    }
    return Call(
        "POST",
        path("orgs", org, "tasks"),
        json=body_of(TaskCreate, fields),
        read=answers.Task.model_validate,
    )


def submit_tasks(org: str, tasks: Sequence[Mapping[str, Any]]) -> Call[list[answers.Task]]:
    """Submit up to 1,000 tasks at once, each a body as ``POST tasks`` takes it (wire names:
    ``role``, ``payload``, ``idempotencyKey``...): all are accepted or none (an error names
    the item, from 0); the answer lists them in the order given."""
    from corral.api.routes.tasks import TaskBatch

    return Call(
        "POST",
        path("orgs", org, "tasks", "batch"),
        json=body_of(TaskBatch, {"tasks": [dict(t) for t in tasks]}),
        read=lambda b: answers.TaskBatch.model_validate(b).tasks,
    )


def get_task(org: str, task: str) -> Call[answers.TaskDetail]:
    """One task with its history, why it waits and its model usage."""
    return Call("GET", path("orgs", org, "tasks", task), read=answers.TaskDetail.model_validate)


def list_tasks(org: str, **filters: Any) -> Call[answers.TaskPage]:
    """A page of tasks, newest first (``next_cursor`` asks for the next); filters ``state``,
    ``role``, ``agent``, ``priority``, ``parent``, ``limit``, ``cursor`` (a list for several
    states or priorities)."""
    params = {k: ",".join(v) if isinstance(v, list | tuple) else v for k, v in filters.items()}
    return Call(
        "GET",
        path("orgs", org, "tasks"),
        params={k: v for k, v in params.items() if v},
        read=answers.TaskPage.model_validate,
    )


def cancel_task(org: str, task: str) -> Call[answers.Task]:
    """Cancel a task that has not ended."""
    return Call(
        "POST", path("orgs", org, "tasks", task, "cancel"), read=answers.Task.model_validate
    )


# -- roles ------------------------------------------------------------------------------------
def list_roles(org: str) -> Call[list[answers.Role]]:
    """The roles the org declares."""
    return Call(
        "GET", path("orgs", org, "roles"), read=lambda b: answers.RoleList.model_validate(b).roles
    )


def get_role(org: str, role: str) -> Call[answers.Role]:
    """One declared role and its agents."""
    return Call("GET", path("orgs", org, "roles", role), read=answers.Role.model_validate)


# -- secrets, grants, audit -------------------------------------------------------------------
def put_secret(org: str, name: str, value: str | bytes) -> Call[answers.Secret]:
    """Store a new version of a secret (bytes are sent as base64); never answers a value."""
    from corral.api.routes.secrets import SecretPut

    if isinstance(value, bytes):
        import base64

        body: JSON = {"valueBase64": base64.b64encode(value).decode()}
    else:
        body = {"value": value}
    body_of(SecretPut, body)  # checked; sent as given (the model hides the value)
    return Call(
        "PUT", path("orgs", org, "secrets", name), json=body, read=answers.Secret.model_validate
    )


def list_secrets(org: str) -> Call[list[answers.Secret]]:
    """The org's secrets: names, versions and times, never values."""
    return Call(
        "GET",
        path("orgs", org, "secrets"),
        read=lambda b: answers.SecretList.model_validate(b).secrets,
    )


def add_grant(
    org: str, *, secret: str, role: str | None = None, agent: str | None = None
) -> Call[answers.Grant]:
    """Let a role or one agent read the secrets ``secret`` names or matches (a glob)."""
    from corral.api.routes.secrets import GrantCreate

    fields = {"secret": secret, "role": role, "agent": agent}
    return Call(
        "POST",
        path("orgs", org, "grants"),
        json=body_of(GrantCreate, fields),
        read=answers.Grant.model_validate,
    )


def list_grants(org: str) -> Call[list[answers.Grant]]:
    """The org's grants."""
    return Call(
        "GET",
        path("orgs", org, "grants"),
        read=lambda b: answers.GrantList.model_validate(b).grants,
    )


def audit(org: str, *, limit: int = 100, before: int | None = None) -> Call[answers.AuditPage]:
    """A page of the org's vault audit log, newest first (``next`` asks for the next)."""
    params: JSON = {"limit": limit}
    if before is not None:
        params["before"] = before
    return Call(
        "GET", path("orgs", org, "audit"), params=params, read=answers.AuditPage.model_validate
    )


# -- models and the platform ------------------------------------------------------------------
def model_usage(org: str, *, period: str | None = None) -> Call[answers.ModelUsage]:
    """Model calls, tokens and cost of a month (``2026-12``; default: this one)."""
    params = {"period": period} if period else None
    return Call(
        "GET",
        path("orgs", org, "usage", "models"),
        params=params,
        read=answers.ModelUsage.model_validate,
    )


def metrics() -> Call[str]:
    """Every tenant's metrics in the Prometheus text format (an admin key)."""
    return Call("GET", "/metrics", read=_text)
