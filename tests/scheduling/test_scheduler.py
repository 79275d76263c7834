"""The scheduler: bands, deadlines, fair share, no head-of-line blocking, expiry, cancel."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from corral.domain.admission import AdmittedResources
from corral.domain.errors import Conflict, InvalidInput, NotFound
from corral.domain.ids import AgentId, OrgId, TaskId
from corral.domain.plans import PLANS
from corral.domain.quantities import parse
from corral.domain.tasks import Priority
from corral.scheduling import (
    PROVISION,
    Action,
    AgentAvailability,
    AgentView,
    Decision,
    Placement,
    QueuedTask,
    Scheduler,
    place,
    wait,
)

LOW, NORMAL, HIGH, CRITICAL = Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.CRITICAL
FREE, ENTERPRISE = OrgId("free"), OrgId("enterprise")
_ids = itertools.count()


def scheduler(*orgs: tuple[str, str], aging_seconds: float = 300.0) -> Scheduler:
    """A scheduler knowing each ``(org, plan)``."""
    sched = Scheduler(aging_seconds=aging_seconds)
    for org, plan in orgs:
        sched.set_org(
            OrgId(org),
            weight=PLANS[plan].fair_share_weight,
            plan_boost=PLANS[plan].plan_boost,
        )
    return sched


def task(
    org: str,
    priority: Priority = NORMAL,
    *,
    name: str | None = None,
    at: float = 0.0,
    deadline: float | None = None,
    role: str | None = None,
) -> QueuedTask:
    return QueuedTask(
        TaskId(name or f"task_{next(_ids)}"),
        OrgId(org),
        priority,
        enqueued_at=at,
        deadline=deadline,
        role=role,
    )


def provision(task: QueuedTask) -> Placement:
    return PROVISION


def drain(sched: Scheduler, now: float = 0.0) -> list[QueuedTask]:
    out = []
    while (decision := sched.pop_next(now, provision)) is not None:
        out.append(decision.task)
    return out


def names(tasks: list[QueuedTask]) -> list[str]:
    return [t.id for t in tasks]


def test_with_one_busy_agent_tasks_come_out_critical_high_normal_low() -> None:
    sched = scheduler(("acme", "standard"))
    for priority in (LOW, NORMAL, HIGH, CRITICAL):
        sched.enqueue(task("acme", priority, name=priority.value))
    resources = AdmittedResources(parse("500m"), parse("1"), parse("2Gi"), parse("4Gi"))
    worker = AgentView(AgentId("agent-1"), "coder", AgentAvailability.BUSY, resources)

    def placer(t: QueuedTask) -> Placement:
        return place(t, [worker], may_provision=lambda: False)  # the one agent is all quota allows

    assert sched.pop_next(0.0, placer) is None  # busy: everything waits, nothing is lost
    assert len(sched) == 4
    order = []
    for _ in range(4):
        worker = AgentView(worker.id, worker.role, AgentAvailability.IDLE, resources)
        sched.wake(OrgId("acme"))  # the agent became idle
        decision = sched.pop_next(0.0, placer)
        assert decision is not None
        assert decision.placement.action is Action.USE
        order.append(decision.task.id)
        worker = AgentView(worker.id, worker.role, AgentAvailability.BUSY, resources)
        assert sched.pop_next(0.0, placer) is None
        sched.on_finished(OrgId("acme"))
    assert order == ["critical", "high", "normal", "low"]


def test_an_enterprise_normal_comes_before_a_free_high() -> None:
    sched = scheduler(("free", "free"), ("enterprise", "enterprise"))
    sched.enqueue(task("free", HIGH, name="free-high"))
    sched.enqueue(task("enterprise", NORMAL, name="enterprise-normal"))
    assert names(drain(sched)) == ["enterprise-normal", "free-high"]


def test_a_free_critical_comes_before_an_enterprise_high() -> None:
    sched = scheduler(("free", "free"), ("enterprise", "enterprise"))
    sched.enqueue(task("enterprise", HIGH, name="enterprise-high"))
    sched.enqueue(task("free", CRITICAL, name="free-critical"))
    assert names(drain(sched)) == ["free-critical", "enterprise-high"]


def test_a_full_org_does_not_delay_another_orgs_tasks() -> None:
    sched = scheduler(("full", "enterprise"), ("other", "free"))
    for _ in range(3):
        sched.enqueue(task("full", CRITICAL))
    for _ in range(3):
        sched.enqueue(task("other", LOW))
    asked: list[str] = []

    def placer(t: QueuedTask) -> Placement:
        asked.append(t.org)
        return wait("quota full") if t.org == "full" else PROVISION

    taken = []
    while (decision := sched.pop_next(0.0, placer)) is not None:
        taken.append(decision.task.org)
    assert taken == ["other", "other", "other"]
    assert asked.count("full") == 1  # parked after the first refusal, not asked again
    assert sched.queued(OrgId("full")) == 3
    waiting = next(iter(sched))
    assert sched.why_waiting(waiting.id) == "quota full"
    sched.on_finished(OrgId("full"))  # capacity freed: its tasks are offered again
    assert [d.org for d in drain(sched)] == ["full"] * 3


def test_a_waiting_role_does_not_block_the_same_orgs_other_roles() -> None:
    sched = scheduler(("acme", "standard"))
    sched.enqueue(task("acme", CRITICAL, role="gpu-trainer", name="train"))
    sched.enqueue(task("acme", LOW, role="writer", name="write"))

    def placer(t: QueuedTask) -> Placement:
        return wait("no gpu") if t.role == "gpu-trainer" else PROVISION

    decision = sched.pop_next(0.0, placer)
    assert decision is not None and decision.task.id == "write"
    assert sched.pop_next(0.0, placer) is None
    assert "train" in sched


def test_a_better_task_gets_a_parked_lane_tried_again() -> None:
    sched = scheduler(("acme", "standard"))
    sched.enqueue(task("acme", LOW, name="low"))
    refuse = True

    def placer(t: QueuedTask) -> Placement:
        return wait("full") if refuse else PROVISION

    assert sched.pop_next(0.0, placer) is None
    refuse = False
    assert sched.pop_next(0.0, placer) is None  # parked: not asked until something changes
    sched.enqueue(task("acme", HIGH, name="high"))
    assert names(drain(sched)) == ["high", "low"]


def test_wake_all_tries_every_parked_lane_again() -> None:
    sched = scheduler(("a", "free"), ("b", "free"))
    sched.enqueue(task("a"))
    sched.enqueue(task("b"))
    assert sched.pop_next(0.0, lambda t: wait("full")) is None
    assert drain(sched) == []
    sched.wake_all()
    assert len(drain(sched)) == 2


def test_deadlines_order_tasks_of_the_same_band() -> None:
    sched = scheduler(("a", "standard"), ("b", "standard"))
    sched.enqueue(task("a", name="none"))
    sched.enqueue(task("a", name="late", deadline=500.0))
    sched.enqueue(task("b", name="soon", deadline=100.0))
    sched.enqueue(task("b", HIGH, name="high-none"))
    assert names(drain(sched)) == ["high-none", "soon", "late", "none"]


def test_expired_tasks_are_reported_and_never_dispatched() -> None:
    sched = scheduler(("a", "standard"))
    sched.enqueue(task("a", name="gone", deadline=10.0))
    sched.enqueue(task("a", HIGH, name="head-gone", deadline=5.0))
    sched.enqueue(task("a", name="kept", deadline=100.0))
    assert names(sched.expire(4.0)) == []
    decision = sched.pop_next(20.0, provision)  # both deadlines passed: set aside, not offered
    assert decision is not None and decision.task.id == "kept"
    assert sorted(names(sched.expire(20.0))) == ["gone", "head-gone"]
    assert sched.expire(1000.0) == []
    assert len(sched) == 0


def test_expire_removes_tasks_deep_in_the_queue() -> None:
    sched = scheduler(("a", "standard"))
    sched.enqueue(task("a", HIGH, name="first"))
    sched.enqueue(task("a", LOW, name="deep", deadline=50.0))
    assert names(sched.expire(50.0)) == ["deep"]
    assert "deep" not in sched
    assert names(drain(sched)) == ["first"]


def test_two_orgs_with_weights_1_and_3_share_the_decisions_25_75() -> None:
    sched = Scheduler()
    sched.set_org(OrgId("one"), weight=1, plan_boost=1)
    sched.set_org(OrgId("three"), weight=3, plan_boost=1)
    for _ in range(2000):
        sched.enqueue(task("one"))
        sched.enqueue(task("three"))
    running: list[OrgId] = []
    taken = Counter[str]()
    for _ in range(2000):
        decision = sched.pop_next(0.0, provision)
        assert decision is not None
        taken[decision.task.org] += 1
        running.append(decision.task.org)
        if len(running) > 40:  # forty slots, each task runs forty decisions
            sched.on_finished(running.pop(0))
    assert taken["one"] / 2000 == pytest.approx(0.25, abs=0.01)
    assert taken["three"] / 2000 == pytest.approx(0.75, abs=0.01)
    assert Counter(running) == {"one": 10, "three": 30}


def test_slots_are_apportioned_to_the_nearest_whole_share() -> None:
    """Seven slots for weights 1 and 4 (fair: 1.4 and 5.6) end as 1 and 6, not 2 and 5."""
    sched = Scheduler()
    sched.set_org(OrgId("small"), weight=1, plan_boost=0)
    sched.set_org(OrgId("large"), weight=4, plan_boost=0)
    for _ in range(10):
        sched.enqueue(task("small"))
        sched.enqueue(task("large"))
    assert Counter(t.org for t in drain_n(sched, 7)) == {"small": 1, "large": 6}


def test_equal_shares_go_to_the_org_handed_fewer_tasks() -> None:
    sched = scheduler(("a", "standard"), ("b", "standard"))
    for name in ("a1", "a2"):
        sched.enqueue(task("a", name=name))
    for name in ("b1", "b2"):
        sched.enqueue(task("b", name=name))
    first = drain_n(sched, 1)[0]
    sched.on_finished(first.org)  # both orgs run nothing again; a has been served once
    assert [first.id, drain_n(sched, 1)[0].id] == ["a1", "b1"]


def test_running_work_counts_toward_fair_share() -> None:
    sched = scheduler(("busy", "standard"), ("idle", "standard"))
    sched.set_running(OrgId("busy"), 5)  # e.g. loaded from the store on start
    for org in ("busy", "idle"):
        for _ in range(10):
            sched.enqueue(task(org))
    assert [d.org for d in drain_n(sched, 5)] == ["idle"] * 5
    sched.on_started(OrgId("idle"))
    assert sched.running(OrgId("idle")) == 6
    assert drain_n(sched, 1)[0].org == "busy"


def drain_n(sched: Scheduler, n: int) -> list[QueuedTask]:
    out = []
    for _ in range(n):
        decision = sched.pop_next(0.0, provision)
        assert decision is not None
        out.append(decision.task)
    return out


def test_equal_tasks_of_equal_orgs_come_out_first_in_first_out() -> None:
    sched = scheduler(("a", "standard"))
    for i in range(5):
        sched.enqueue(task("a", name=f"t{i}"))
    assert names(drain(sched)) == [f"t{i}" for i in range(5)]


def test_an_old_low_task_ages_past_new_high_tasks() -> None:
    sched = scheduler(("a", "free"), ("b", "free"), aging_seconds=10.0)
    sched.enqueue(task("a", LOW, name="old-low", at=0.0))
    sched.enqueue(task("b", HIGH, name="new-high", at=35.0))  # 3 periods later: 0+3 > 2+0
    assert names(drain(sched, now=35.0)) == ["old-low", "new-high"]


def test_ageing_never_lifts_a_task_above_critical() -> None:
    sched = scheduler(("a", "enterprise"), ("b", "free"), aging_seconds=1.0)
    sched.enqueue(task("a", HIGH, name="ancient-high", at=0.0))
    sched.enqueue(task("b", CRITICAL, name="fresh-critical", at=1e9))
    assert names(drain(sched, now=1e9)) == ["fresh-critical", "ancient-high"]


def test_cancel_removes_a_queued_task() -> None:
    sched = scheduler(("a", "standard"))
    sched.enqueue(task("a", HIGH, name="cancelled"))
    sched.enqueue(task("a", name="kept"))
    removed = sched.remove(TaskId("cancelled"))
    assert removed is not None and removed.id == "cancelled"
    assert sched.remove(TaskId("cancelled")) is None
    assert sched.peek() is not None and sched.peek().id == "kept"  # type: ignore[union-attr]
    assert names(drain(sched)) == ["kept"]


def test_a_task_put_back_keeps_its_place_and_its_org_its_share() -> None:
    sched = scheduler(("a", "standard"), ("b", "standard"))
    for name in ("a1", "a2"):
        sched.enqueue(task("a", name=name))
    sched.enqueue(task("b", name="b1"))
    taken = drain_n(sched, 1)[0]  # a1: its agent must be woken first
    sched.put_back(taken)
    assert sched.running(OrgId("a")) == 0
    assert names(drain(sched)) == ["a1", "b1", "a2"]


def test_a_task_put_back_late_goes_to_the_back_of_its_band() -> None:
    sched = scheduler(("a", "standard"))
    for name in ("t1", "t2", "t3"):
        sched.enqueue(task("a", name=name))
    first, second = drain_n(sched, 2)
    sched.put_back(first)  # not the last one handed out: its old place is not known
    sched.put_back(second)
    assert names(drain(sched)) == ["t2", "t3", "t1"]


def test_a_queued_task_cannot_be_put_back() -> None:
    sched = scheduler(("a", "standard"))
    queued = task("a")
    sched.enqueue(queued)
    with pytest.raises(Conflict):
        sched.put_back(queued)
    assert len(sched) == 1


def test_a_cancelled_task_may_be_queued_again() -> None:
    sched = scheduler(("a", "standard"))
    sched.enqueue(task("a", name="again"))
    removed = sched.remove(TaskId("again"))
    assert removed is not None
    sched.enqueue(removed)
    assert names(drain(sched)) == ["again"]


def test_a_task_queued_twice_is_a_conflict() -> None:
    sched = scheduler(("a", "standard"))
    sched.enqueue(task("a", name="dup"))
    with pytest.raises(Conflict):
        sched.enqueue(task("a", name="dup"))


def test_an_unknown_org_is_not_found() -> None:
    with pytest.raises(NotFound):
        Scheduler().enqueue(task("nobody"))
    with pytest.raises(NotFound):
        Scheduler().on_finished(OrgId("nobody"))


@pytest.mark.parametrize("weight", [0, -1, float("nan"), float("inf")])
def test_a_weight_must_be_positive(weight: float) -> None:
    with pytest.raises(InvalidInput):
        Scheduler().set_org(OrgId("a"), weight=weight, plan_boost=0)


def test_times_must_be_numbers() -> None:
    sched = scheduler(("a", "free"))
    with pytest.raises(InvalidInput):
        sched.enqueue(task("a", at=float("inf")))
    with pytest.raises(InvalidInput):
        sched.enqueue(task("a", deadline=float("nan")))
    with pytest.raises(InvalidInput):
        Scheduler(aging_seconds=0)


def test_a_plan_upgrade_re_ranks_the_orgs_queued_tasks() -> None:
    sched = scheduler(("free", "free"), ("standard", "standard"))
    sched.enqueue(task("free", HIGH, name="free-high"))  # 2 + 0
    sched.enqueue(task("standard", HIGH, name="standard-high"))  # 2 + 1
    sched.set_org(OrgId("free"), weight=4, plan_boost=2)  # upgraded to enterprise: 2 + 2
    assert names(drain(sched)) == ["free-high", "standard-high"]


def test_dropping_an_org_returns_its_queued_tasks() -> None:
    sched = scheduler(("a", "free"), ("b", "free"))
    sched.enqueue(task("a", name="a1"))
    sched.enqueue(task("a", name="a2", deadline=5.0))
    sched.enqueue(task("b", name="b1"))
    sched.remove(TaskId("a1"))
    assert names(sched.drop_org(OrgId("a"))) == ["a2"]
    assert sched.drop_org(OrgId("a")) == []
    assert sched.expire(10.0) == []
    assert names(drain(sched)) == ["b1"]


def test_a_failing_placer_leaves_the_task_queued_and_schedulable() -> None:
    sched = scheduler(("a", "free"))
    sched.enqueue(task("a", name="t"))

    def broken(t: QueuedTask) -> Placement:
        raise RuntimeError("snapshot unavailable")

    with pytest.raises(RuntimeError):
        sched.pop_next(0.0, broken)
    assert names(drain(sched)) == ["t"]


def test_a_decision_carries_the_placement() -> None:
    sched = scheduler(("a", "free"))
    sched.enqueue(task("a", name="t"))
    decision = sched.pop_next(0.0, provision)
    assert isinstance(decision, Decision)
    assert decision == (decision.task, PROVISION)
    assert sched.running(OrgId("a")) == 1
    assert sched.queued(OrgId("a")) == 0


def test_many_cancellations_are_compacted_away() -> None:
    sched = scheduler(("a", "free"))
    for i in range(5000):
        sched.enqueue(task("a", name=f"t{i}", deadline=1e6 + i))
    for i in range(0, 5000, 2):
        sched.remove(TaskId(f"t{i}"))
    assert len(sched) == 2500
    assert names(drain(sched)) == [f"t{i}" for i in range(1, 5000, 2)]


def test_the_oldest_wait_is_kept_without_reading_the_queue_and_stays_bounded() -> None:
    """``oldest`` answers from a heap of arrivals; what left the queue below a task that
    stays (here: 10,000 newer tasks, each taken) is compacted away, not kept forever."""
    sched = scheduler(("enterprise", "enterprise"))
    old = task(ENTERPRISE, at=5.0)
    sched.enqueue(old)
    for n in range(10_000):
        newer = task(ENTERPRISE, at=10.0 + n)
        sched.enqueue(newer)
        assert sched.remove(newer.id) is newer
        assert sched.oldest(ENTERPRISE) == 5.0
    assert len(sched._orgs[ENTERPRISE].arrivals) <= 2 * sched.queued(ENTERPRISE) + 64
    assert sched.remove(old.id) is old
    assert sched.oldest(ENTERPRISE) is None
    sched.enqueue(task(ENTERPRISE, at=20.0))
    drain(sched)
    assert sched._orgs[ENTERPRISE].arrivals == []  # an emptied queue keeps no arrivals
    assert sched.oldest(OrgId("nobody")) is None


def test_a_task_handed_out_and_put_back_again_and_again_keeps_the_arrivals_bounded() -> None:
    """Each put-back enqueues the same task again; compaction keeps one entry per task."""
    sched = scheduler(("enterprise", "enterprise"))
    waiting = task(ENTERPRISE, at=7.0)
    sched.enqueue(waiting)
    for _ in range(10_000):
        decision = sched.pop_next(0.0, provision)
        assert decision is not None and decision.task is waiting
        sched.put_back(waiting)
        assert sched.oldest(ENTERPRISE) == 7.0
    assert len(sched._orgs[ENTERPRISE].arrivals) <= 2 * sched.queued(ENTERPRISE) + 64
