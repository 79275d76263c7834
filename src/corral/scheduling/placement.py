"""Placement: where one task should run, decided from a snapshot of its org's agents.

The preference order is the cheapest first: an idle running agent that fits, then a paused one
that fits (resuming keeps its workspace and costs about a second), then a new agent if the
org's quota allows one more, else wait. An agent fits when its role matches (a task without a
role takes any) and its admitted requests cover the task's requirements. Among fitting agents
the smallest wins, so large agents stay free for large tasks; among equal ones, the one with the
most free slots, so that work spreads over agents that run several tasks at once. A task addressed to one agent
(``agent_id``) goes to that agent or waits for it; role and requirements are the sender's
business then.

Pure: the caller takes the snapshot and the quota answer; nothing here reads a store or a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Protocol

from corral.domain.admission import AdmittedResources
from corral.domain.ids import AgentId
from corral.domain.tasks import Requirements

__all__ = [
    "PROVISION",
    "Action",
    "AgentAvailability",
    "AgentView",
    "Placeable",
    "Placement",
    "fits",
    "place",
    "use",
    "wait",
    "wake",
]


class AgentAvailability(StrEnum):
    """An agent as placement sees it; the controller maps its lifecycle states onto these."""

    IDLE = "idle"  # running with a free slot: can take a task now
    BUSY = "busy"  # running as many tasks as it has slots
    PAUSED = "paused"  # scaled to zero with its workspace kept: can be resumed
    UNAVAILABLE = "unavailable"  # provisioning, pausing, resuming, failed: not a candidate now


@dataclass(frozen=True, slots=True)
class AgentView:
    id: AgentId
    role: str
    availability: AgentAvailability
    resources: AdmittedResources
    free_slots: int = 1  # tasks it can still take now (an agent may run several at once)


class Action(StrEnum):
    USE = "use"  # send the task to the idle agent ``agent_id``
    WAKE = "wake"  # resume the paused agent ``agent_id``, then send it the task
    PROVISION = "provision"  # create a new agent for the task's role and requirements
    WAIT = "wait"  # nothing can take it now; ``reason`` says why


@dataclass(frozen=True, slots=True)
class Placement:
    action: Action
    agent_id: AgentId | None = None
    reason: str = ""

    @property
    def waits(self) -> bool:
        return self.action is Action.WAIT


PROVISION = Placement(Action.PROVISION)


def use(agent_id: AgentId) -> Placement:
    return Placement(Action.USE, agent_id)


def wake(agent_id: AgentId) -> Placement:
    return Placement(Action.WAKE, agent_id)


def wait(reason: str) -> Placement:
    return Placement(Action.WAIT, reason=reason)


class Placeable(Protocol):
    """What placement needs to know of a task (a scheduler's ``QueuedTask`` is one)."""

    @property
    def role(self) -> str | None: ...

    @property
    def requirements(self) -> Requirements: ...

    @property
    def agent_id(self) -> AgentId | None: ...


def fits(agent: AgentView, *, role: str | None, requirements: Requirements) -> bool:
    """Whether ``agent`` can run a task of ``role`` needing ``requirements``."""
    if role is not None and agent.role != role:
        return False
    res = agent.resources
    if requirements.cpu is not None and res.cpu_request < requirements.cpu:
        return False
    if requirements.memory is not None and res.memory_request < requirements.memory:
        return False
    return res.gpu >= requirements.gpu


def _size(agent: AgentView) -> tuple[int, Fraction, Fraction, int, str]:
    res = agent.resources
    return (res.gpu, res.cpu_request.value, res.memory_request.value, -agent.free_slots, agent.id)


def place(
    task: Placeable, agents: Iterable[AgentView], *, may_provision: Callable[[], bool]
) -> Placement:
    """Decide where ``task`` runs among its org's ``agents``.

    Args:
        task: the task's role, requirements and, if addressed to one agent, that agent.
        agents: a snapshot of the org's agents.
        may_provision: whether the org's quota and agent limit admit one more agent sized for
            this task; asked only when no existing agent fits.

    Returns:
        ``USE`` an idle agent, ``WAKE`` a paused one, ``PROVISION`` a new one, or ``WAIT``
        with a reason a user can read.
    """
    if task.agent_id is not None:
        return _place_addressed(task.agent_id, agents)
    idle: list[AgentView] = []
    paused: list[AgentView] = []
    for agent in agents:
        if agent.availability is AgentAvailability.IDLE:
            bucket = idle
        elif agent.availability is AgentAvailability.PAUSED:
            bucket = paused
        else:
            continue
        if fits(agent, role=task.role, requirements=task.requirements):
            bucket.append(agent)
    if idle:
        return use(min(idle, key=_size).id)
    if paused:
        return wake(min(paused, key=_size).id)
    if may_provision():
        return PROVISION
    what = f"{task.role!r} agent" if task.role is not None else "agent"
    return wait(
        f"no idle or paused {what} fits the task and the organization's quota admits no new agent"
    )


def _place_addressed(agent_id: AgentId, agents: Iterable[AgentView]) -> Placement:
    for agent in agents:
        if agent.id != agent_id:
            continue
        if agent.availability is AgentAvailability.IDLE:
            return use(agent_id)
        if agent.availability is AgentAvailability.PAUSED:
            return wake(agent_id)
        return wait(f"agent {agent_id} is {agent.availability.value}")
    return wait(f"agent {agent_id} does not exist")
