"""``/v1/orgs/{org}/roles``: the roles an organization declares (see :mod:`corral.domain.roles`).

``PUT /roles`` applies a whole roles file at once (all of it or, on any error, nothing;
``dryRun`` answers what would change), ``PUT /roles/{role}`` one role.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import ConfigDict, Field

from corral.api import answers
from corral.api.auth import Caller, caller, org_scope, platform
from corral.api.routes.models import DOLLARS
from corral.api.routes.tasks import RetryIn, Seconds
from corral.api.schemas import LABEL30, QUANTITY, Strict, strip_nulls
from corral.domain.agents import MAX_SLOTS, Agent, AgentState
from corral.domain.budgets import MAX_TOKENS
from corral.domain.roles import MAX_ROLE_AGENTS, Role, role_from_wire, roles_from_document
from corral.domain.tenancy import Organization

__all__ = ["router"]

router = APIRouter(prefix="/v1/orgs/{org}/roles")
Org = Annotated[Organization, Depends(org_scope)]
Who = Annotated[Caller, Depends(caller)]
RoleName = Annotated[str, Path(min_length=1, max_length=30, json_schema_extra={"pattern": LABEL30})]
DryRun = Annotated[bool, Query(alias="dryRun", description="say what would change; change nothing")]

#: ``90``, ``90s``, ``5m``, ``2h``, ``1d`` (at most 30 days; or a number of seconds)
_DURATION = r"^([1-9][0-9]{0,5}s?|[1-9][0-9]{0,3}m|[1-9][0-9]?h|[1-9]d)$"
#: an environment variable's name, not one of the platform's (``CORRAL_*``)
_ENV_NAME = (
    r"^([A-BD-Za-z_]|C([A-NP-Za-z0-9_]|$)|CO([A-QS-Za-z0-9_]|$)|COR([A-QS-Za-z0-9_]|$)"
    r"|CORR([B-Za-z0-9_]|$)|CORRA([A-KM-Za-z0-9_]|$)|CORRAL([A-Za-z0-9]|$))[A-Za-z0-9_]*$"
)
#: a secret's name or a glob over names (``*``, ``?``)
_PATTERN = r"^[a-z0-9.*?-]{1,253}$"


class Amounts(Strict):
    cpu: str | None = Field(default=None, max_length=32, json_schema_extra={"pattern": QUANTITY})
    memory: str | None = Field(default=None, max_length=32, json_schema_extra={"pattern": QUANTITY})


class Resources(Strict):
    requests: Amounts | None = None
    limits: Amounts | None = None
    gpu: int = Field(default=0, ge=0, le=16)


class TaskDefaults(Strict):
    """What the role's tasks get unless their submitter says otherwise."""

    retry: RetryIn | None = None
    run_timeout: Seconds | None = Field(default=None, alias="runTimeout")
    heartbeat_timeout: Seconds | None = Field(default=None, alias="heartbeatTimeout")


class RoleBudget(Strict):
    """What the role's agents may spend on model calls each period (a calendar month)."""

    tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS, description="omitted: no limit")
    cost: str | None = Field(
        default=None,
        description="dollars; omitted: no limit",
        json_schema_extra={"pattern": DOLLARS},
    )


class RoleBody(Strict):
    """A role as declared, its name aside (it is in the path); every field may be omitted."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=strip_nulls)

    command: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        default=None, min_length=1, max_length=64, description="omitted: the built-in agent"
    )
    slots: int = Field(default=1, ge=1, le=MAX_SLOTS, description="tasks each agent runs at once")
    resources: Resources | None = None
    min_agents: int = Field(default=0, ge=0, le=MAX_ROLE_AGENTS, alias="minAgents")
    max_agents: int = Field(default=1, ge=1, le=MAX_ROLE_AGENTS, alias="maxAgents")
    idle_timeout: Seconds | Annotated[str, Field(pattern=_DURATION)] | None = Field(
        default=None,
        alias="idleTimeout",
        description="idle time before an agent is paused: seconds, or 30s, 5m, 2h, 1d "
        "(omitted: the plan's)",
    )
    env: (
        dict[
            Annotated[str, Field(max_length=128, pattern=_ENV_NAME)],
            Annotated[str, Field(max_length=4096)],
        ]
        | None
    ) = Field(default=None, max_length=128)
    task_defaults: TaskDefaults | None = Field(
        default=None, alias="taskDefaults", description="over the plan's task defaults"
    )
    secrets: list[Annotated[str, Field(pattern=_PATTERN)]] | None = Field(
        default=None, max_length=64, description="secret names or globs its agents may read"
    )
    on_demand: bool = Field(default=True, alias="onDemand")
    budget: RoleBudget | None = Field(
        default=None, description="model spending per period of the role's agents"
    )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_unset=True, exclude_none=True)


class RoleSpec(RoleBody):
    """A role of a roles file: its name and what :class:`RoleBody` holds."""

    name: str = Field(min_length=1, max_length=30, json_schema_extra={"pattern": LABEL30})


class RolesFile(Strict):
    roles: list[RoleSpec] = Field(max_length=256)


def role_to_wire(role: Role, agents: list[Agent] | None = None) -> dict[str, Any]:
    out = {**role.to_wire(), "version": role.version}
    if agents is not None:
        out["agents"] = [a.to_wire() for a in agents]
    return out


@router.put("", response_model=answers.RolesApplied, response_model_exclude_unset=True)
async def apply_roles(
    body: RolesFile, org: Org, who: Who, request: Request, dry_run: DryRun = False
) -> dict[str, Any]:
    """Create or change every role of a roles file; roles it does not name are left alone."""
    doc = {"roles": [r.wire() for r in body.roles]}
    roles = roles_from_document(doc, limit_range=org.plan.limit_range)
    changes = await platform(request).roles.apply(org, roles, actor=who.label, dry_run=dry_run)
    return {"dryRun": dry_run, "changes": [c.to_wire() for c in changes]}


@router.get("", response_model=answers.RoleList, response_model_exclude_unset=True)
async def list_roles(org: Org, request: Request) -> dict[str, Any]:
    return {"roles": [role_to_wire(r) for r in platform(request).roles.roles(org.id)]}


@router.put("/{role}", response_model=answers.RolePut, response_model_exclude_unset=True)
async def put_role(
    role: RoleName,
    body: RoleBody,
    org: Org,
    who: Who,
    request: Request,
    dry_run: DryRun = False,
) -> dict[str, Any]:
    """Create or change one role; answers what changed and the role as it is now."""
    wanted = role_from_wire(body.wire(), limit_range=org.plan.limit_range, name=role)
    service = platform(request).roles
    [change] = await service.apply(org, [wanted], actor=who.label, dry_run=dry_run)
    current = service.role(org.id, role)
    return {
        "dryRun": dry_run,
        "change": change.to_wire(),
        "role": role_to_wire(current) if current is not None else None,
    }


@router.get("/{role}", response_model=answers.Role, response_model_exclude_unset=True)
async def show_role(role: RoleName, org: Org, request: Request) -> dict[str, Any]:
    """The role's spec and its agents (those not terminated)."""
    p = platform(request)
    found = await p.roles.get(org, role)
    agents = [
        a
        for a in await p.controller.find_agents(org)
        if a.role == role and a.state is not AgentState.TERMINATED
    ]
    return role_to_wire(found, agents)


@router.delete("/{role}", status_code=204)
async def delete_role(role: RoleName, org: Org, who: Who, request: Request) -> Response:
    """Forget the role (its agents stay until terminated; the grants it made are revoked)."""
    await platform(request).roles.delete(org, role, actor=who.label)
    return Response(status_code=204)
