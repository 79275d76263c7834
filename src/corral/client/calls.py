"""The client's requests, built once for the sync and the async client: each is a
:class:`Call` (method, path, body, query) whose body went through the API's own request
models, so what the server would refuse for its shape is refused here first, with the same
words; and each answer is read back into JSON or into the platform's error tree."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from corral.domain import errors, wire

# The API's request models are imported where a call is built, not here: they bring the
# server's imports along (seconds), and a client that only sends ``request()``s (the CLI)
# should not wait for them.

__all__ = ["JSON", "TERMINAL_STATES", "Call", "answer", "body_of", "path", "unreachable"]

#: a JSON object as the API answers it
JSON = dict[str, Any]
#: the states a task ends in
TERMINAL_STATES = frozenset({"completed", "blocked", "failed", "cancelled", "expired"})


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] | None = None
    timeout: float | None = None  # this call's own, when it waits on the server's side


def path(*parts: str) -> str:
    """``/v1/orgs/{parts...}`` with each part quoted as one path segment."""
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


def org_create(name: str, plan: str | None) -> Call:
    from corral.api.schemas import OrgCreate

    return Call("POST", "/v1/orgs", json=body_of(OrgCreate, {"name": name, "plan": plan}))


def agent_create(org: str, fields: Mapping[str, Any], *, wait_timeout: float) -> Call:
    from corral.api.routes.agents import AgentCreate

    body = body_of(AgentCreate, fields)
    timeout = wait_timeout if body.get("wait") else None
    return Call("POST", path("orgs", org, "agents"), json=body, timeout=timeout)


def task_create(org: str, fields: Mapping[str, Any]) -> Call:
    from corral.api.routes.tasks import TaskCreate

    return Call("POST", path("orgs", org, "tasks"), json=body_of(TaskCreate, fields))


def secret_put(org: str, name: str, value: str | bytes) -> Call:
    from corral.api.routes.secrets import SecretPut

    if isinstance(value, bytes):
        import base64

        body: JSON = {"valueBase64": base64.b64encode(value).decode()}
    else:
        body = {"value": value}
    body_of(SecretPut, body)  # checked; sent as given (the model hides the value)
    return Call("PUT", path("orgs", org, "secrets", name), json=body)


def grant_create(org: str, secret: str, role: str | None, agent: str | None) -> Call:
    from corral.api.routes.secrets import GrantCreate

    fields = {"secret": secret, "role": role, "agent": agent}
    return Call("POST", path("orgs", org, "grants"), json=body_of(GrantCreate, fields))


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


def unreachable(url: str, call: Call, exc: httpx.HTTPError) -> errors.Unavailable:
    """What a transport failure means to the caller: the API is not there, or slow."""
    if isinstance(exc, httpx.TimeoutException):
        return errors.Unavailable(
            f"the Corral API at {url} did not answer {call.method} {call.path} in time"
        )
    return errors.Unavailable(
        f"cannot reach the Corral API at {url}: {exc}. Is `corral up` running?"
    )


# -- the rest of the API's calls, by what they act on --------------------------------------
def agent_fields(
    name: str,
    role: str | None,
    cpu: str | None,
    memory: str | None,
    cpu_limit: str | None,
    memory_limit: str | None,
    gpu: int | None,
    command: list[str] | None,
    slots: int | None,
    wait: bool,
) -> JSON:
    return {
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


def task_fields(
    role: str | None,
    agent: str | None,
    payload: Mapping[str, Any] | None,
    priority: str | None,
    deadline: str | None,
    requirements: Mapping[str, Any] | None,
    idempotency_key: str | None,
    extra: Mapping[str, Any],
) -> JSON:
    return {
        "role": role,
        "agent": agent,
        "payload": dict(payload) if payload is not None else None,
        "priority": priority,
        "deadline": deadline,
        "requirements": dict(requirements) if requirements is not None else None,
        "idempotencyKey": idempotency_key,
        **extra,
    }


def task_list(org: str, filters: Mapping[str, Any]) -> Call:
    params = {k: ",".join(v) if isinstance(v, list | tuple) else v for k, v in filters.items()}
    return Call("GET", path("orgs", org, "tasks"), params={k: v for k, v in params.items() if v})


def flag(value: bool) -> str:
    return "true" if value else "false"
