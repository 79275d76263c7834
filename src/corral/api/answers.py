"""The API's answers as pydantic models: each route declares its answer (``response_model``),
so ``/openapi.json`` documents what comes back, and :mod:`corral.client` reads the same
models back into typed, frozen objects.

The wire is what the services render (``to_wire()``); these models describe it and must
not change it: fields keep their wire names as aliases (attributes are snake_case), times
stay the strings they were rendered as, numbers keep their JSON type, a field absent from an
answer stays absent (routes answer with ``exclude_unset``), and fields a model does not
name pass through (``extra="allow"``) so an older client reads a newer platform. Only
pydantic and the domain's enums here: the client imports this module without the server.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from corral.domain.agents import AgentState
from corral.domain.tasks import Priority, TaskState

__all__ = [
    "Agent",
    "AgentList",
    "AgentLogs",
    "AgentResources",
    "Answer",
    "AuditEntry",
    "AuditPage",
    "BudgetView",
    "CreatedOrg",
    "Grant",
    "GrantList",
    "ModelEndpoint",
    "ModelList",
    "ModelUsage",
    "Org",
    "OrgDetail",
    "OrgPage",
    "PlanList",
    "QuotaUse",
    "ResourceAmounts",
    "Role",
    "RoleChange",
    "RoleList",
    "RolePut",
    "RolesApplied",
    "Secret",
    "SecretList",
    "Task",
    "TaskDetail",
    "TaskPage",
    "TaskTransition",
    "Usage",
    "UsageMeasured",
]

#: a JSON number as it was sent: an integer stays one (``1``, not ``1.0``)
Number = int | float
#: a time as the platform renders it (ISO 8601, with its zone)
Time = str


class Answer(BaseModel):
    """An answer of the API: read-only, wire names as aliases, unknown fields kept."""

    model_config = ConfigDict(
        frozen=True,
        extra="allow",
        alias_generator=to_camel,
        populate_by_name=True,
        protected_namespaces=(),
    )

    def to_wire(self) -> dict[str, Any]:
        """The answer as the API sent it: wire names, and only the fields it had."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


# -- organizations --------------------------------------------------------------------------
class Org(Answer):
    id: str
    name: str
    plan: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    created_at: Time


class CreatedOrg(Org):
    api_key: str = Field(description="the org's API key, shown this once")


class QuotaUse(Answer):
    hard: str
    used: str


class OrgDetail(Org):
    usage: dict[str, QuotaUse] = Field(description="per quota resource: hard and used")


class OrgPage(Answer):
    orgs: list[Org]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: last")


class PlanList(Answer):
    plans: list[dict[str, Any]]


class UsageMeasured(Answer):
    cpu_seconds: Number
    rss_bytes: int


class BudgetView(Answer):
    """The org's model budget of a period and what it used."""

    period: str
    budget: dict[str, Any]
    own_budget: bool
    limits: dict[str, Any]
    total: dict[str, Any]


class ModelUsage(BudgetView):
    """Model calls, tokens and cost of a period, per role, model and agent."""

    by_role: list[dict[str, Any]]
    by_model: list[dict[str, Any]]
    by_agent: list[dict[str, Any]]


class Usage(Answer):
    org: str
    plan: str
    quota: dict[str, QuotaUse]
    agents: dict[str, int] = Field(description="agents by state")
    tasks: dict[str, int] = Field(description="tasks by state")
    queue_depth: int
    measured: UsageMeasured
    models: ModelUsage


# -- agents -----------------------------------------------------------------------------------
class ResourceAmounts(Answer):
    cpu: str
    memory: str


class AgentResources(Answer):
    requests: ResourceAmounts
    limits: ResourceAmounts
    gpu: int


class Agent(Answer):
    id: str
    org: str
    name: str
    role: str
    state: AgentState
    idle: bool
    current_task: str | None
    resources: AgentResources
    command: list[str]
    slots: int
    role_version: int | None
    restarts: int
    created_at: Time | None
    last_seen_at: Time | None
    paused_at: Time | None
    resumed_at: Time | None
    terminated_at: Time | None
    detail: str
    sandbox: str | None = Field(
        default=None,
        description="how the local runtime confines its running process: strict, "
        "best-effort (missing: ...) or off",
    )


class AgentList(Answer):
    agents: list[Agent]


class AgentLogs(Answer):
    agent: str
    logs: str


# -- tasks ------------------------------------------------------------------------------------
class TaskTransition(Answer):
    from_state: str | None = Field(alias="from")
    to: str
    at: Time
    detail: str


class Task(Answer):
    id: str
    org: str
    role: str | None
    agent: str | None = Field(description="the agent it was sent to, if one was named")
    assigned_agent: str | None
    parent: str | None
    from_agent: str | None
    priority: Priority
    deadline: Time | None
    requirements: dict[str, Any]
    payload: dict[str, Any]
    result: dict[str, Any] | None
    state: TaskState
    attempts: int
    progress: Number | None
    created_at: Time
    updated_at: Time
    policy: dict[str, Any]
    idempotency_key: str | None
    trace_id: str | None
    history: list[TaskTransition] | None = None


class TaskDetail(Task):
    waiting: str | None = Field(description="why a queued task is not dispatched yet")
    model_usage: dict[str, Any]


class TaskBatch(Answer):
    tasks: list[Task] = Field(description="the tasks, in the order they were submitted")


class TaskPage(Answer):
    tasks: list[Task]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: last")


# -- secrets, grants, audit -------------------------------------------------------------------
class Secret(Answer):
    name: str
    version: int
    created_at: Time
    updated_at: Time


class SecretList(Answer):
    secrets: list[Secret]


class Grant(Answer):
    id: str
    secret: str
    role: str | None
    agent: str | None
    created_at: Time


class GrantList(Answer):
    grants: list[Grant]


class AuditEntry(Answer):
    id: int
    actor: str
    action: str
    target: str
    allowed: bool
    at: Time
    detail: str


class AuditPage(Answer):
    entries: list[AuditEntry]
    next: int | None


# -- roles ------------------------------------------------------------------------------------
class Role(Answer):
    name: str
    command: list[str] | None
    slots: int
    resources: dict[str, Any]
    min_agents: int
    max_agents: int
    idle_timeout: Number | None
    env: dict[str, str]
    task_defaults: dict[str, Any] | None
    secrets: list[str]
    on_demand: bool
    version: int
    agents: list[Agent] | None = Field(default=None, description="its agents, on GET of one role")


class RoleList(Answer):
    roles: list[Role]


class RoleChange(Answer):
    name: str
    action: str = Field(description="create, update or unchanged")
    changes: dict[str, dict[str, Any]] = Field(description="per field: from and to")


class RolesApplied(Answer):
    dry_run: bool
    changes: list[RoleChange]


class RolePut(Answer):
    dry_run: bool
    change: RoleChange
    role: Role | None


# -- models -----------------------------------------------------------------------------------
class ModelEndpoint(Answer):
    name: str
    base_url: str
    key_secret: str
    upstream_model: str
    price_in: str
    price_out: str
    created_at: Time | None
    updated_at: Time | None


class ModelList(Answer):
    models: list[ModelEndpoint]
