"""The AgentRuntime protocol: start, stop, status, logs and workspaces for agents."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from corral.domain.admission import AdmittedResources

__all__ = ["Adopting", "AgentRuntime", "LaunchSpec", "Phase", "RuntimeStatus"]


class Phase(StrEnum):
    STARTING = "starting"  # created, not yet confirmed running
    RUNNING = "running"  # the process / pod is alive
    EXITED = "exited"  # stopped on purpose, or exited with code 0
    CRASHED = "crashed"  # died without being asked (non-zero exit, signal, OOM)
    ABSENT = "absent"  # the runtime knows nothing of it (never started, or gone)


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything a runtime needs to start one agent. Holds no secret values but ``creds``,
    which the runtime writes to a 0600 file (local) or a Secret (Kubernetes), never to the
    environment or the command line."""

    org: str  # the org slug
    org_id: str
    agent_id: str
    name: str
    role: str
    resources: AdmittedResources
    command: Sequence[str]  # argv for the local runtime; container args on Kubernetes
    env: Mapping[str, str]  # non-secret: CORRAL_ORG, CORRAL_AGENT_ID, CORRAL_NATS_URL, ...
    creds: str  # the agent's NATS user credentials (JWT + seed)
    image: str = "ghcr.io/corral/agent:latest"


@dataclass(frozen=True, slots=True)
class RuntimeStatus:
    org: str
    agent_id: str
    phase: Phase
    pid: int | None = None
    exit_code: int | None = None
    limits: str = ""  # which mechanism enforces memory/CPU: "cgroup-v2", "cgroup-v1", "rlimit"
    detail: Mapping[str, str] = field(default_factory=dict)


class AgentRuntime(Protocol):
    """Where agents run. Every method is idempotent and safe to call from the reconciler."""

    name: str

    async def prepare_org(self, org: str, *, labels: Mapping[str, str]) -> None:
        """Create the org's boundary (directory; namespace with quota, policies)."""

    async def remove_org(self, org: str) -> None:
        """Stop everything of the org and delete its boundary and workspaces."""

    async def start(self, spec: LaunchSpec) -> RuntimeStatus:
        """Create the workspace if missing (it is kept across stop/start) and start the agent.

        Raises:
            Conflict: the agent is already running.
            Unavailable: the runtime could not start it; nothing is left behind.
        """

    async def stop(self, org: str, agent_id: str, *, grace: float = 5.0) -> None:
        """Stop the agent (SIGTERM, then SIGKILL after ``grace``) and wait until it is gone.
        Keeps the workspace."""

    async def status(self, org: str, agent_id: str) -> RuntimeStatus: ...

    async def logs(self, org: str, agent_id: str, *, tail: int = 200) -> str: ...

    async def workspace_exists(self, org: str, agent_id: str) -> bool: ...

    async def delete_workspace(self, org: str, agent_id: str) -> None: ...

    async def list_agents(self) -> list[RuntimeStatus]:
        """Every agent this runtime finds running or left behind (for reconciliation)."""

    def exits(self) -> AsyncIterator[RuntimeStatus]:
        """Crash and exit notifications, as they happen."""

    async def close(self) -> None:
        """Release the runtime's resources; the local runtime stops all its agents."""


@runtime_checkable
class Adopting(Protocol):
    """A runtime whose agents can outlive their control plane and be adopted by the next one
    (replicas: docs/ha.md)."""

    async def adopt(self, org: str, agent_id: str) -> RuntimeStatus | None:
        """Supervise a running agent another control plane started, without restarting it;
        None when it cannot be adopted (it is then handled as a leftover)."""

    async def detach(self) -> None:
        """Stop supervising, leaving every adoptable agent running for the next leader."""
