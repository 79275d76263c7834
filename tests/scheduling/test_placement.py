"""Placement: idle agent that fits → paused one that fits → a new one if quota allows → wait."""

from __future__ import annotations

from corral.domain.admission import AdmittedResources
from corral.domain.ids import AgentId, OrgId, TaskId
from corral.domain.quantities import parse
from corral.domain.tasks import Requirements
from corral.scheduling import (
    PROVISION,
    Action,
    AgentAvailability,
    AgentView,
    QueuedTask,
    fits,
    place,
)

IDLE, BUSY, PAUSED = AgentAvailability.IDLE, AgentAvailability.BUSY, AgentAvailability.PAUSED
UNAVAILABLE = AgentAvailability.UNAVAILABLE


def agent(
    name: str,
    availability: AgentAvailability,
    *,
    role: str = "coder",
    cpu: str = "500m",
    memory: str = "2Gi",
    gpu: int = 0,
) -> AgentView:
    resources = AdmittedResources(parse(cpu), parse(cpu), parse(memory), parse(memory), gpu)
    return AgentView(AgentId(name), role, availability, resources)


def task(
    *,
    role: str | None = "coder",
    cpu: str | None = None,
    memory: str | None = None,
    gpu: int = 0,
    agent_id: str | None = None,
) -> QueuedTask:
    needs = Requirements(
        None if cpu is None else parse(cpu), None if memory is None else parse(memory), gpu
    )
    return QueuedTask(
        TaskId("task_1"),
        OrgId("org_a"),
        role=role,
        requirements=needs,
        agent_id=None if agent_id is None else AgentId(agent_id),
    )


def yes() -> bool:
    return True


def no() -> bool:
    return False


def test_an_idle_agent_that_fits_is_used_first() -> None:
    agents = [agent("paused", PAUSED), agent("idle", IDLE), agent("busy", BUSY)]
    placement = place(task(), agents, may_provision=yes)
    assert (placement.action, placement.agent_id) == (Action.USE, "idle")


def test_a_paused_agent_is_woken_when_none_is_idle() -> None:
    agents = [agent("busy", BUSY), agent("paused", PAUSED)]
    placement = place(task(), agents, may_provision=yes)
    assert (placement.action, placement.agent_id) == (Action.WAKE, "paused")


def test_a_new_agent_is_provisioned_when_none_fits_and_quota_allows() -> None:
    agents = [agent("busy", BUSY), agent("starting", UNAVAILABLE)]
    assert place(task(), agents, may_provision=yes) is PROVISION


def test_the_task_waits_when_nothing_fits_and_quota_is_full() -> None:
    placement = place(task(), [agent("busy", BUSY)], may_provision=no)
    assert placement.waits
    assert "'coder' agent" in placement.reason
    assert "quota" in placement.reason


def test_quota_is_asked_only_when_no_existing_agent_fits() -> None:
    asked: list[bool] = []

    def spy() -> bool:
        asked.append(True)
        return False

    place(task(), [agent("idle", IDLE)], may_provision=spy)
    assert asked == []


def test_an_agent_of_another_role_does_not_fit() -> None:
    placement = place(task(role="reviewer"), [agent("idle", IDLE)], may_provision=no)
    assert placement.waits


def test_a_task_without_a_role_takes_any_agent() -> None:
    placement = place(task(role=None), [agent("idle", IDLE, role="reviewer")], may_provision=no)
    assert placement.agent_id == "idle"


def test_an_agent_fits_when_its_admitted_requests_cover_the_requirements() -> None:
    small = agent("small", IDLE, cpu="500m", memory="1Gi")
    assert fits(small, role="coder", requirements=Requirements(parse("0.5"), parse("1024Mi")))
    assert not fits(small, role="coder", requirements=Requirements(cpu=parse("501m")))
    assert not fits(small, role="coder", requirements=Requirements(memory=parse("2Gi")))
    assert not fits(small, role="coder", requirements=Requirements(gpu=1))
    assert fits(agent("gpu", IDLE, gpu=1), role=None, requirements=Requirements(gpu=1))


def test_too_small_idle_agents_are_passed_over_for_a_paused_one_that_fits() -> None:
    agents = [agent("small", IDLE, cpu="250m"), agent("big", PAUSED, cpu="2")]
    placement = place(task(cpu="1"), agents, may_provision=no)
    assert (placement.action, placement.agent_id) == (Action.WAKE, "big")


def test_the_smallest_fitting_agent_is_chosen() -> None:
    agents = [
        agent("large", IDLE, cpu="4", memory="16Gi"),
        agent("gpu", IDLE, cpu="1", gpu=1),
        agent("medium", IDLE, cpu="1", memory="4Gi"),
    ]
    assert place(task(cpu="1"), agents, may_provision=no).agent_id == "medium"


def test_an_addressed_task_goes_to_its_agent_or_waits_for_it() -> None:
    addressed = task(agent_id="target", role="other")
    assert place(addressed, [agent("target", IDLE)], may_provision=yes).agent_id == "target"
    woken = place(addressed, [agent("target", PAUSED)], may_provision=yes)
    assert woken.action is Action.WAKE
    busy = place(addressed, [agent("target", BUSY), agent("idle", IDLE)], may_provision=yes)
    assert busy.waits
    assert "busy" in busy.reason
    assert "does not exist" in place(addressed, [], may_provision=yes).reason
