"""Agents: identity, lifecycle states and the transitions between them."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from corral.domain.admission import AdmittedResources
from corral.domain.errors import Conflict, InvalidInput
from corral.domain.ids import AgentId
from corral.domain.tenancy import is_dns1123_label
from corral.domain.wire import MAX_SLOTS

__all__ = [
    "MAX_SLOTS",
    "Agent",
    "AgentState",
    "HOLDS_POD",
    "HOLDS_WORKSPACE",
    "LIVE_STATES",
    "make_agent_id",
    "require_transition",
    "validate_name",
]


class AgentState(StrEnum):
    PROVISIONING = "provisioning"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    TERMINATED = "terminated"
    FAILED = "failed"


#: States in which the agent holds a pod slot (and its requests) against the quota.
HOLDS_POD = frozenset(
    {AgentState.PROVISIONING, AgentState.RUNNING, AgentState.PAUSING, AgentState.RESUMING}
)
#: States in which the agent holds its workspace (PVC) and an agent slot against the quota (a
#: failed agent's workspace is kept, but it holds nothing until it is resumed).
HOLDS_WORKSPACE = HOLDS_POD | {AgentState.PAUSED}
LIVE_STATES = HOLDS_WORKSPACE | {AgentState.FAILED}

# A restart re-enters ``provisioning`` (or ``resuming``, for the reconciler's restart of an
# agent that was resuming) from the state the agent crashed in.
_ALLOWED: dict[AgentState, frozenset[AgentState]] = {
    AgentState.PROVISIONING: frozenset(
        {AgentState.PROVISIONING, AgentState.RUNNING, AgentState.FAILED, AgentState.TERMINATED}
    ),
    AgentState.RUNNING: frozenset(
        {AgentState.PAUSING, AgentState.FAILED, AgentState.TERMINATED, AgentState.PROVISIONING}
    ),
    AgentState.PAUSING: frozenset(
        {AgentState.PAUSED, AgentState.RUNNING, AgentState.TERMINATED, AgentState.FAILED}
    ),
    AgentState.PAUSED: frozenset({AgentState.RESUMING, AgentState.TERMINATED}),
    AgentState.RESUMING: frozenset(
        {
            AgentState.RESUMING,
            AgentState.PROVISIONING,
            AgentState.RUNNING,
            AgentState.PAUSED,
            AgentState.FAILED,
            AgentState.TERMINATED,
        }
    ),
    AgentState.FAILED: frozenset({AgentState.RESUMING, AgentState.TERMINATED}),
    AgentState.TERMINATED: frozenset(),
}


def require_transition(agent_id: str, current: AgentState, target: AgentState) -> None:
    """Raises Conflict when an agent in ``current`` cannot move to ``target``."""
    if target not in _ALLOWED[current]:
        raise Conflict(
            f"agent {agent_id} is {current.value}; it cannot become {target.value}",
            details={"agent": agent_id, "state": current.value, "wanted": target.value},
        )


def validate_name(kind: str, value: str) -> str:
    """Agent names and roles are DNS-1123 labels of at most 30 characters."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{kind} must not be empty", details={"field": kind})
    if not is_dns1123_label(value, max_length=30):
        raise InvalidInput(
            f"{kind} {value!r} must be a DNS-1123 label (lower-case letters, digits, '-') "
            "of at most 30 characters",
            details={"field": kind, "value": value},
        )
    return value


def make_agent_id(org: str, name: str, suffix: str | None = None) -> AgentId:
    """``agent-<org>-<name>-<suffix>``, as in the seed; at most 63 characters."""
    suffix = suffix or secrets.token_hex(3)
    agent_id = f"agent-{org}-{name}-{suffix}"
    if len(agent_id) > 63:
        raise InvalidInput(
            f"agent id {agent_id!r} would be {len(agent_id)} characters (max 63): "
            "use a shorter agent name",
            details={"field": "name"},
        )
    return AgentId(agent_id)


@dataclass(frozen=True, slots=True)
class Agent:
    id: AgentId
    org_id: str
    org: str  # slug
    name: str
    role: str
    state: AgentState
    resources: AdmittedResources
    command: tuple[str, ...]
    busy_task: str | None
    restarts: int
    public_key: str | None
    created_at: datetime
    updated_at: datetime
    last_seen_at: datetime | None = None
    paused_at: datetime | None = None
    resumed_at: datetime | None = None
    terminated_at: datetime | None = None
    detail: str = ""
    slots: int = 1  # tasks it runs at once (the SDK's CORRAL_AGENT_SLOTS)
    env: Mapping[str, str] = field(default_factory=dict)  # its role's environment
    role_version: int | None = None  # the version of its role's spec it was provisioned with

    @property
    def idle(self) -> bool:
        return self.state is AgentState.RUNNING and self.busy_task is None

    def to_wire(self) -> dict[str, object]:
        def ts(v: datetime | None) -> str | None:
            return v.isoformat() if v else None

        return {
            "id": self.id,
            "org": self.org,
            "name": self.name,
            "role": self.role,
            "state": self.state.value,
            "idle": self.idle,
            "currentTask": self.busy_task,
            "resources": self.resources.to_wire(),
            "command": list(self.command),
            "slots": self.slots,
            "roleVersion": self.role_version,
            "restarts": self.restarts,
            "createdAt": ts(self.created_at),
            "lastSeenAt": ts(self.last_seen_at),
            "pausedAt": ts(self.paused_at),
            "resumedAt": ts(self.resumed_at),
            "terminatedAt": ts(self.terminated_at),
            "detail": self.detail,
        }
