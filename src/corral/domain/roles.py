"""Roles: what an organization declares each role of its agents to be, as a Deployment does.

A role names the agent program that serves it (a command, or the built-in agent), the
resources of each of its agents (within the org's LimitRange), how many tasks each runs at once
(``slots``), its environment, how far it scales (``minAgents`` warm, at most ``maxAgents``),
how long an agent may idle before it is paused, the retry policy and timeouts its tasks get
unless their submitter says otherwise, the secrets it may read, and whether the platform may
provision its agents on demand, and what its agents may spend on model calls each period
(``budget``: tokens and/or dollars, held like the org's). The wire shape is the one outside tools write::

    roles:
      - name: assistant
        command: ["python", "/srv/agents/assistant.py"]   # omitted: the built-in agent
        slots: 4
        resources: {requests: {cpu: 500m, memory: 1Gi}, limits: {cpu: "1", memory: 2Gi}}
        minAgents: 0
        maxAgents: 5
        idleTimeout: 5m
        env: {MODEL: small}
        budget: {tokens: 2000000, cost: "25"}   # per calendar month; omitted: none

How many agents a role needs for its queue is :func:`agents_needed`. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.domain.admission import AdmittedResources, ContainerRequest, apply_limit_range
from corral.domain.agents import MAX_SLOTS, validate_name
from corral.domain.budgets import Budget, budget_from_wire
from corral.domain.errors import Conflict, InvalidInput
from corral.domain.grants import validate_pattern
from corral.domain.plans import LimitRange
from corral.domain.policies import TaskPolicy, parse_duration
from corral.domain.quantities import Quantity, parse

__all__ = [
    "MAX_ROLE_AGENTS",
    "Role",
    "RoleChange",
    "agents_needed",
    "diff",
    "role_from_wire",
    "roles_from_document",
]

#: The most agents one role may declare (``maxAgents``).
MAX_ROLE_AGENTS = 1000
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_FIELDS = (
    "name",
    "command",
    "slots",
    "resources",
    "minAgents",
    "maxAgents",
    "idleTimeout",
    "env",
    "taskDefaults",
    "secrets",
    "onDemand",
    "budget",
)


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    command: tuple[str, ...] | None = None  # None: the built-in agent
    slots: int = 1
    request: ContainerRequest = field(default_factory=ContainerRequest)
    min_agents: int = 0
    max_agents: int = 1
    idle_timeout: float | None = None  # seconds; None: the plan's
    env: Mapping[str, str] = field(default_factory=dict)
    task_defaults: Mapping[str, Any] | None = None  # a TaskPolicy's wire fields
    secrets: tuple[str, ...] = ()  # secret names or patterns its agents may read
    on_demand: bool = True  # the platform provisions agents for its queue
    budget: Budget | None = None  # its agents' model spending per period
    version: int = 0  # the store's: bumped by every change of the spec

    def resources(self, limit_range: LimitRange) -> AdmittedResources:
        """Each agent's resources after the org's LimitRange defaulting."""
        return apply_limit_range(self.request, limit_range)

    def policy(self, base: TaskPolicy) -> TaskPolicy:
        """``base`` (the plan's defaults) with the role's task defaults over it."""
        return TaskPolicy.from_wire(self.task_defaults, base=base)

    def to_wire(self) -> dict[str, Any]:
        """The spec, in the shape it is declared in (every field, defaults included)."""
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        r = self.request
        for out, key, value in (
            (requests, "cpu", r.cpu_request),
            (requests, "memory", r.memory_request),
            (limits, "cpu", r.cpu_limit),
            (limits, "memory", r.memory_limit),
        ):
            if value is not None:
                out[key] = value.render()
        resources: dict[str, Any] = {"requests": requests, "limits": limits}
        if r.gpu:
            resources["gpu"] = r.gpu
        wire: dict[str, Any] = {
            "name": self.name,
            "command": list(self.command) if self.command is not None else None,
            "slots": self.slots,
            "resources": resources,
            "minAgents": self.min_agents,
            "maxAgents": self.max_agents,
            "idleTimeout": self.idle_timeout,
            "env": dict(self.env),
            "taskDefaults": dict(self.task_defaults) if self.task_defaults else None,
            "secrets": list(self.secrets),
            "onDemand": self.on_demand,
        }
        if self.budget is not None:  # left out when none: specs stored before it compare equal
            wire["budget"] = self.budget.to_wire()
        return wire


def role_from_wire(
    obj: object, *, limit_range: LimitRange | None, name: str | None = None, version: int = 0
) -> Role:
    """A role from its declared shape, checked within ``limit_range``.

    Args:
        obj: the role's mapping (``name`` may be omitted when ``name`` is given).
        limit_range: the org's; each agent's resources must fit it (``None``: a spec read
            back from the store, checked when it was declared).
        name: the role's name from elsewhere (a URL); must agree with ``obj``'s.

    Raises:
        InvalidInput: an unknown field or a bad value, named.
        Conflict: ``minAgents`` above ``maxAgents``, or a request above its own limit.
        QuotaExceeded: resources above the LimitRange's per-container max.
    """
    if not isinstance(obj, Mapping):
        raise InvalidInput("a role must be a mapping of its fields")
    unknown = sorted(str(k) for k in set(obj) - set(_FIELDS))
    if unknown:
        raise InvalidInput(
            f"unknown role field(s) {', '.join(unknown)}: use {', '.join(_FIELDS)}",
            details={"fields": unknown},
        )
    declared = obj.get("name", name)
    if name is not None and declared != name:
        raise InvalidInput(
            f"the role's name {declared!r} differs from {name!r}", details={"field": "name"}
        )
    role_name = validate_name("role", declared)
    where = f"role {role_name}: "
    try:
        role = Role(
            name=role_name,
            command=_command(obj.get("command")),
            slots=_count(obj.get("slots", 1), "slots", 1, MAX_SLOTS),
            request=_request(obj.get("resources")),
            min_agents=_count(obj.get("minAgents", 0), "minAgents", 0, MAX_ROLE_AGENTS),
            max_agents=_count(obj.get("maxAgents", 1), "maxAgents", 1, MAX_ROLE_AGENTS),
            idle_timeout=_duration(obj.get("idleTimeout")),
            env=_env(obj.get("env")),
            task_defaults=_task_defaults(obj.get("taskDefaults")),
            secrets=_secrets(obj.get("secrets")),
            on_demand=_flag(obj.get("onDemand", True), "onDemand"),
            budget=budget_from_wire(obj.get("budget")),
            version=version,
        )
        if role.min_agents > role.max_agents:  # a limit of its own refuses it
            raise Conflict(
                f"{where}minAgents {role.min_agents} is above maxAgents {role.max_agents}",
                details={"role": role_name, "field": "minAgents"},
            )
    except InvalidInput as exc:
        raise InvalidInput(where + exc.message, details={"role": role_name, **exc.details}) from exc
    if limit_range is not None:
        try:
            role.resources(limit_range)
        except InvalidInput as exc:  # a request above its own limit: its limit refuses it
            raise Conflict(where + exc.message, details={"role": role_name, **exc.details}) from exc
    return role


def roles_from_document(doc: object, *, limit_range: LimitRange) -> list[Role]:
    """Every role of a ``{roles: [...]}`` document; a name declared twice is refused.

    Raises:
        InvalidInput: not such a document, or a bad role (the first, named).
        Conflict: a role declared twice, or its ``minAgents`` above its ``maxAgents``.
        QuotaExceeded: a role's resources above the LimitRange's max.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("roles"), list):
        raise InvalidInput("a roles file is a mapping with a list under 'roles'")
    if set(doc) - {"roles"}:
        raise InvalidInput("a roles file holds only 'roles'", details={"field": "roles"})
    roles = [role_from_wire(item, limit_range=limit_range) for item in doc["roles"]]
    seen: set[str] = set()
    for role in roles:
        if role.name in seen:
            raise Conflict(f"role {role.name} is declared twice", details={"role": role.name})
        seen.add(role.name)
    return roles


@dataclass(frozen=True, slots=True)
class RoleChange:
    """What applying a role would do: ``create``, ``update`` (the fields that change, each
    from → to) or ``unchanged``."""

    name: str
    action: str
    fields: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "changes": {k: {"from": a, "to": b} for k, (a, b) in self.fields.items()},
        }


def diff(current: Role | None, wanted: Role) -> RoleChange:
    """How ``wanted`` differs from the role as it is (``None``: not declared yet)."""
    if current is None:
        return RoleChange(wanted.name, "create")
    before, after = current.to_wire(), wanted.to_wire()
    keys = [*after, *(k for k in before if k not in after)]
    fields = {k: (before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)}
    return RoleChange(wanted.name, "update" if fields else "unchanged", fields)


def agents_needed(role: Role, *, queued: int, free_slots: int, starting: int, live: int) -> int:
    """How many new agents ``role``'s queue asks for now: enough slots for what is queued,
    less the free slots of its running agents and the slots of those already on their way,
    never more than ``maxAgents`` counting the ``live`` ones (running, starting or paused).
    """
    wanted = math.ceil(max(0, queued - free_slots) / role.slots) - starting
    return max(0, min(wanted, role.max_agents - live))


def _command(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 64
        or not all(isinstance(a, str) and 0 < len(a) <= 4096 for a in value)
    ):
        raise InvalidInput(
            "command must be a list of 1 to 64 non-empty strings (omit it for the built-in agent)",
            details={"field": "command"},
        )
    return tuple(value)


def _count(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(
            f"{what} must be a whole number from {low} to {high}, got {value!r}",
            details={"field": what},
        )
    return value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false, got {value!r}", details={"field": what})
    return value


def _duration(value: object) -> float | None:
    return None if value is None else parse_duration(value, what="idleTimeout")


def _quantity(value: object, what: str) -> Quantity | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a quantity like 500m or 1Gi", details={"field": what})
    try:
        return parse(value)
    except InvalidInput as exc:
        raise InvalidInput(f"{what}: {exc.message}", details={"field": what}) from exc


def _request(value: object) -> ContainerRequest:
    if value is None:
        return ContainerRequest()
    if not isinstance(value, Mapping) or set(value) - {"requests", "limits", "gpu"}:
        raise InvalidInput(
            "resources must be a mapping of requests, limits (and gpu)",
            details={"field": "resources"},
        )
    parts: dict[str, dict[str, Quantity | None]] = {}
    for kind in ("requests", "limits"):
        given = value.get(kind) or {}
        if not isinstance(given, Mapping) or set(given) - {"cpu", "memory"}:
            raise InvalidInput(
                f"resources.{kind} must be a mapping of cpu and memory",
                details={"field": f"resources.{kind}"},
            )
        parts[kind] = {
            k: _quantity(given.get(k), f"resources.{kind}.{k}") for k in ("cpu", "memory")
        }
    gpu = _count(value.get("gpu", 0), "resources.gpu", 0, 16)
    return ContainerRequest(
        cpu_request=parts["requests"]["cpu"],
        cpu_limit=parts["limits"]["cpu"],
        memory_request=parts["requests"]["memory"],
        memory_limit=parts["limits"]["memory"],
        gpu=gpu,
    )


def _env(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > 128:
        raise InvalidInput("env must be a mapping of at most 128 names to strings")
    env: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k) or k.startswith("CORRAL_"):
            raise InvalidInput(
                f"env name {k!r} must be letters, digits and '_' and not start with CORRAL_ "
                "(the platform's own)",
                details={"field": "env"},
            )
        if isinstance(v, bool) or not isinstance(v, str | int | float) or len(str(v)) > 4096:
            raise InvalidInput(f"env {k} must be a string", details={"field": f"env.{k}"})
        env[k] = str(v)
    return env


def _task_defaults(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidInput("taskDefaults must be a mapping", details={"field": "taskDefaults"})
    TaskPolicy.from_wire(value, base=TaskPolicy())  # refuses what a task would refuse
    return dict(value)


def _secrets(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidInput(
            "secrets must be a list of secret names or patterns", details={"field": "secrets"}
        )
    return tuple(dict.fromkeys(validate_pattern(p) for p in value))
