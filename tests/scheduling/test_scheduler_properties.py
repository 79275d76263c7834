"""Properties of the scheduler, checked with generated workloads.

The state machine drives the scheduler and a brute-force reference — every decision sorts all
queued tasks by the documented rule — through the same random operations and requires the same
decisions, the same placement questions, the same expiries and the same counts.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from corral.domain.ids import AgentId, OrgId, TaskId
from corral.domain.plans import PLANS
from corral.domain.tasks import Priority, effective_priority
from corral.scheduling import PROVISION, Placement, QueuedTask, Scheduler, wait

PRIORITIES = list(Priority)
PLAN_NAMES = sorted(PLANS)
LaneKey = tuple[str, str | None, str | None]


def lane_of(task: QueuedTask) -> LaneKey:
    return (task.org, task.role, task.agent_id)


@dataclass
class _RefOrg:
    weight: float
    boost: int
    running: int = 0
    served: int = 0

    @property
    def share(self) -> float:
        return (self.running + 0.5) / self.weight

    @property
    def vtime(self) -> float:
        return self.served / self.weight


@dataclass
class Reference:
    """The documented rule, applied by sorting everything at every decision."""

    aging: float
    orgs: dict[str, _RefOrg] = field(default_factory=dict)
    tasks: dict[str, tuple[QueuedTask, int]] = field(default_factory=dict)
    parked: set[LaneKey] = field(default_factory=set)
    set_aside: list[QueuedTask] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    last: tuple[QueuedTask, int] | None = None

    def order(self, task: QueuedTask, seq: int) -> tuple[int, int, float, int]:
        band = effective_priority(task.priority, self.orgs[task.org].boost)
        tier = 0 if task.priority is Priority.CRITICAL else 1
        key = math.floor(task.enqueued_at / self.aging) - band
        deadline = math.inf if task.deadline is None else task.deadline
        return (tier, key, deadline, seq)

    def head(self, lane: LaneKey) -> QueuedTask | None:
        members = [(self.order(t, s), t) for t, s in self.tasks.values() if lane_of(t) == lane]
        return min(members, key=lambda m: m[0])[1] if members else None

    def set_org(self, org: str, weight: float, boost: int) -> None:
        state = self.orgs.setdefault(org, _RefOrg(weight, boost))
        state.weight, state.boost = weight, boost

    def enqueue(self, task: QueuedTask, seq: int | None = None) -> None:
        self.tasks[task.id] = (task, next(self.seq) if seq is None else seq)
        if self.head(lane_of(task)) is task:
            self.parked.discard(lane_of(task))

    def put_back(self, task: QueuedTask) -> None:
        """Back in its old place if it was the last handed out; counts undone."""
        if self.last is not None and self.last[0] is task:
            self.enqueue(task, self.last[1])
            self.last = None
        else:
            self.enqueue(task)
        org = self.orgs[task.org]
        org.running = max(0, org.running - 1)
        org.served = max(0, org.served - 1)

    def remove(self, task_id: str) -> QueuedTask | None:
        entry = self.tasks.pop(task_id, None)
        return None if entry is None else entry[0]

    def pop_next(self, now: float, placer: PlacerLog) -> QueuedTask | None:
        while True:
            lanes = {lane_of(t) for t, _ in self.tasks.values()} - self.parked
            if not lanes:
                return None

            def rank(lane: LaneKey) -> tuple[object, ...]:
                task = self.head(lane)
                assert task is not None
                tier, key, deadline, seq = self.order(task, self.tasks[task.id][1])
                org = self.orgs[task.org]
                return (tier, key, deadline, org.share, org.vtime, seq)

            best = min(lanes, key=rank)
            task = self.head(best)
            assert task is not None
            if task.deadline is not None and task.deadline <= now:
                del self.tasks[task.id]
                self.set_aside.append(task)
                continue
            if placer(task).waits:
                self.parked.add(best)
                continue
            self.last = (task, self.tasks.pop(task.id)[1])
            org = self.orgs[task.org]
            org.running += 1
            org.served += 1
            return task

    def unpark(self, org: str) -> None:
        self.parked = {lane for lane in self.parked if lane[0] != org}

    def on_finished(self, org: str) -> None:
        state = self.orgs[org]
        state.running = max(0, state.running - 1)
        self.unpark(org)

    def expire(self, now: float) -> list[QueuedTask]:
        out, self.set_aside = self.set_aside, []
        for task, _ in list(self.tasks.values()):
            if task.deadline is not None and task.deadline <= now:
                del self.tasks[task.id]
                out.append(task)
        return out

    def drop_org(self, org: str) -> list[QueuedTask]:
        dropped = [t for t, _ in self.tasks.values() if t.org == org]
        for t in dropped:
            del self.tasks[t.id]
        self.unpark(org)
        del self.orgs[org]
        return dropped


class PlacerLog:
    """A placer that refuses some lanes and remembers every task it was asked about."""

    def __init__(self, refused: set[LaneKey]) -> None:
        self.refused = refused
        self.asked: list[str] = []

    def __call__(self, task: QueuedTask) -> Placement:
        self.asked.append(task.id)
        return wait("full") if lane_of(task) in self.refused else PROVISION


ORGS = ["a", "b", "c"]
INITIAL_PLANS = ["standard", "standard", "enterprise"]  # equal weights tie on fair share
ROLES = [None, "r"]
AGENTS = [None, "agent-1"]
LANES = [(o, r, a) for o in ORGS for r in ROLES for a in AGENTS]
# Few epochs and few deadlines, so that bands tie across orgs and fair share decides often.
ages = st.integers(0, 8)
deadlines = st.none() | st.integers(-4, 40)
agents = st.sampled_from(AGENTS) | st.none()
TaskSpec = tuple[str, Priority, int, int | None, str | None, str | None]
task_specs = st.tuples(
    st.sampled_from(ORGS),
    st.sampled_from(PRIORITIES),
    ages,
    deadlines,
    st.sampled_from(ROLES),
    agents,
)
STEP = 2.5  # times on a coarse grid: no two deadlines closer than the scheduler's microsecond


class SchedulerAgreesWithReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.sched = Scheduler(aging_seconds=10.0)
        self.ref = Reference(aging=10.0)
        self.ids = itertools.count()
        self.taken: list[QueuedTask] = []
        for org, plan in zip(ORGS, INITIAL_PLANS, strict=True):
            self.set_org(org, plan)

    def set_org(self, org: str, plan: str) -> None:
        weight, boost = PLANS[plan].fair_share_weight, PLANS[plan].plan_boost
        self.sched.set_org(OrgId(org), weight=weight, plan_boost=boost)
        self.ref.set_org(org, weight, boost)

    @initialize(batch=st.lists(task_specs, min_size=10, max_size=40))
    def backlog(self, batch: list[TaskSpec]) -> None:
        self.enqueue(batch)

    @rule(batch=st.lists(task_specs, min_size=1, max_size=12))
    def enqueue(self, batch: list[TaskSpec]) -> None:
        for org, priority, age, deadline, role, agent in batch:
            task = QueuedTask(
                TaskId(f"t{next(self.ids)}"),
                OrgId(org),
                priority,
                enqueued_at=self.now - age * STEP,
                deadline=None if deadline is None else self.now + deadline * STEP,
                role=role,
                agent_id=None if agent is None else AgentId(agent),
            )
            self.sched.enqueue(task)
            self.ref.enqueue(task)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ids = sorted(self.ref.tasks) + ["missing"]
        task_id = data.draw(st.sampled_from(ids))
        assert self.sched.remove(TaskId(task_id)) == self.ref.remove(task_id)

    @rule(
        advance=st.integers(0, 6),
        refused=st.sets(st.sampled_from(LANES), max_size=6),
        decisions=st.integers(1, 10),
    )
    def decide(self, advance: int, refused: set[LaneKey], decisions: int) -> None:
        self.now += advance * STEP
        for _ in range(decisions):
            ours, theirs = PlacerLog(refused), PlacerLog(refused)
            decision = self.sched.pop_next(self.now, ours)
            expected = self.ref.pop_next(self.now, theirs)
            assert (None if decision is None else decision.task) == expected
            assert ours.asked == theirs.asked
            if expected is None:
                break
            self.taken.append(expected)

    @rule(data=st.data())
    def put_back(self, data: st.DataObject) -> None:
        """Put back the task handed out last, or an older one (which goes to the back)."""
        candidates = [t for t in self.taken[-3:] if t.id not in self.ref.tasks]
        if not candidates:
            return
        task = data.draw(st.sampled_from(candidates))
        self.sched.put_back(task)
        self.ref.put_back(task)

    @rule(org=st.sampled_from(ORGS))
    def finish(self, org: str) -> None:
        self.sched.on_finished(OrgId(org))
        self.ref.on_finished(org)

    @rule(org=st.sampled_from(ORGS))
    def start_elsewhere(self, org: str) -> None:
        self.sched.on_started(OrgId(org))
        self.ref.orgs[org].running += 1

    @rule(org=st.sampled_from(ORGS))
    def wake(self, org: str) -> None:
        self.sched.wake(OrgId(org))
        self.ref.unpark(org)

    @rule(advance=st.integers(0, 6))
    def expire(self, advance: int) -> None:
        self.now += advance * STEP
        ours = sorted(t.id for t in self.sched.expire(self.now))
        assert ours == sorted(t.id for t in self.ref.expire(self.now))

    @rule(org=st.sampled_from(ORGS), plan=st.sampled_from(PLAN_NAMES))
    def change_plan(self, org: str, plan: str) -> None:
        self.set_org(org, plan)

    @rule(org=st.sampled_from(ORGS), plan=st.sampled_from(PLAN_NAMES))
    def drop_and_recreate_org(self, org: str, plan: str) -> None:
        ours = sorted(t.id for t in self.sched.drop_org(OrgId(org)))
        assert ours == sorted(t.id for t in self.ref.drop_org(org))
        self.set_org(org, plan)

    @invariant()
    def same_queue(self) -> None:
        assert sorted(t.id for t in self.sched) == sorted(self.ref.tasks)
        for org in ORGS:
            assert self.sched.running(OrgId(org)) == self.ref.orgs[org].running
            queued = sum(1 for t, _ in self.ref.tasks.values() if t.org == org)
            assert self.sched.queued(OrgId(org)) == queued
            arrivals = [t.enqueued_at for t, _ in self.ref.tasks.values() if t.org == org]
            assert self.sched.oldest(OrgId(org)) == (min(arrivals) if arrivals else None)


SchedulerAgreesWithReference.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None
)
test_scheduler_agrees_with_the_reference = SchedulerAgreesWithReference.TestCase


# -- properties of the order -----------------------------------------------------------------

workloads = st.lists(
    st.tuples(
        st.sampled_from(PLAN_NAMES),  # the org's plan (one org per plan)
        st.sampled_from(PRIORITIES),
        st.integers(0, 10_000),  # enqueued at, seconds
    ),
    min_size=1,
    max_size=60,
)


def build(workload: list[tuple[str, Priority, int]], *, aging: float = 60.0) -> Scheduler:
    sched = Scheduler(aging_seconds=aging)
    for plan in PLAN_NAMES:
        p = PLANS[plan]
        sched.set_org(OrgId(plan), weight=p.fair_share_weight, plan_boost=p.plan_boost)
    for i, (plan, priority, at) in enumerate(workload):
        sched.enqueue(QueuedTask(TaskId(f"t{i}"), OrgId(plan), priority, enqueued_at=float(at)))
    return sched


def drain(sched: Scheduler, placer: PlacerLog | None = None) -> list[QueuedTask]:
    out = []
    while (decision := sched.pop_next(1e9, placer or PlacerLog(set()))) is not None:
        out.append(decision.task)
    return out


@settings(deadline=None)  # wall-clock limits flake on a busy machine
@given(workloads)
def test_critical_tasks_always_come_first_whatever_their_age_or_plan(
    workload: list[tuple[str, Priority, int]],
) -> None:
    tiers = [t.priority is Priority.CRITICAL for t in drain(build(workload, aging=1.0))]
    assert tiers == sorted(tiers, reverse=True)


@settings(deadline=None)  # wall-clock limits flake on a busy machine
@given(workloads)
def test_tasks_queued_together_come_out_by_band(workload: list[tuple[str, Priority, int]]) -> None:
    same_time = [(plan, priority, 0) for plan, priority, _ in workload]

    def rank(t: QueuedTask) -> tuple[bool, int]:
        band = effective_priority(t.priority, PLANS[t.org].plan_boost)
        return (t.priority is Priority.CRITICAL, band)

    ranks = [rank(t) for t in drain(build(same_time))]
    assert ranks == sorted(ranks, reverse=True)


@settings(deadline=None)  # wall-clock limits flake on a busy machine
@given(workloads, st.sets(st.sampled_from(PLAN_NAMES)))
def test_a_waiting_org_never_delays_the_others(
    workload: list[tuple[str, Priority, int]], waiting: set[str]
) -> None:
    sched = build(workload)
    refused: set[LaneKey] = {(org, None, None) for org in waiting}
    taken = drain(sched, PlacerLog(refused))
    assert all(t.org not in waiting for t in taken)
    assert len(taken) == sum(1 for plan, _, _ in workload if plan not in waiting)
    assert all(t.org in waiting for t in sched)


@settings(deadline=None)  # wall-clock limits flake on a busy machine
@given(
    priority=st.sampled_from([Priority.LOW, Priority.NORMAL, Priority.HIGH]),
    rival=st.sampled_from([Priority.LOW, Priority.NORMAL, Priority.HIGH]),
    aging=st.sampled_from([1.0, 5.0, 30.0]),
    backlog=st.integers(0, 20),
)
def test_ageing_lets_no_task_starve(
    priority: Priority, rival: Priority, aging: float, backlog: int
) -> None:
    """One slot; a free org's task against an enterprise org that queues a new task every
    second: the free task still runs within a bound set by the band gap and the backlog."""
    sched = Scheduler(aging_seconds=aging)
    sched.set_org(OrgId("free"), weight=1, plan_boost=0)
    sched.set_org(OrgId("rich"), weight=4, plan_boost=2)
    sched.enqueue(QueuedTask(TaskId("patient"), OrgId("free"), priority, enqueued_at=0.0))
    arrivals = itertools.count()

    def arrive(now: float) -> None:
        name = TaskId(f"rival-{next(arrivals)}")
        sched.enqueue(QueuedTask(name, OrgId("rich"), rival, enqueued_at=now))

    for _ in range(backlog):
        arrive(0.0)
    gap = effective_priority(rival, 2) - effective_priority(priority, 0)
    bound = (max(gap, 0) + 2) * aging + backlog + 2
    now = 0.0
    while now <= bound:
        arrive(now)
        decision = sched.pop_next(now, lambda t: PROVISION)
        assert decision is not None
        if decision.task.id == "patient":
            return
        sched.on_finished(decision.task.org)  # one slot: it ran for a second
        now += 1.0
    raise AssertionError(f"the {priority} task starved past {bound} s")


@settings(deadline=None, max_examples=40)
@given(weights=st.lists(st.integers(1, 6), min_size=2, max_size=4))
def test_fair_share_converges_to_the_weights(weights: list[int]) -> None:
    """Saturated orgs, a fixed number of slots, every task running one turnover of them."""
    sched = Scheduler()
    orgs = [OrgId(f"org-{i}") for i in range(len(weights))]
    for org, weight in zip(orgs, weights, strict=True):
        sched.set_org(org, weight=weight, plan_boost=1)
        for j in range(1500):
            sched.enqueue(QueuedTask(TaskId(f"{org}-{j}"), org))
    slots = 10 * sum(weights)
    running: list[OrgId] = []
    taken = Counter[str]()
    decisions = 5 * slots
    for k in range(decisions + slots):
        decision = sched.pop_next(0.0, lambda t: PROVISION)
        assert decision is not None
        running.append(decision.task.org)
        if len(running) > slots:
            sched.on_finished(running.pop(0))
        if k >= slots:  # after the first turnover
            taken[decision.task.org] += 1
    for org, weight in zip(orgs, weights, strict=True):
        fair = weight / sum(weights)
        assert abs(taken[org] / decisions / fair - 1) < 0.05
        assert abs(sched.running(org) - 10 * weight) <= 1  # one slot is between two tasks
