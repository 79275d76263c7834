"""The task rules of corral.domain.tasks: bands, ageing, requirements and the state machine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.domain.errors import Conflict, InvalidInput
from corral.domain.plans import PLANS
from corral.domain.tasks import (
    CRITICAL_BAND,
    MAX_PLAN_BOOST,
    TERMINAL_STATES,
    Priority,
    Requirements,
    TaskState,
    aged_band,
    can_transition,
    check_transition,
    effective_priority,
)

S = TaskState
boosts = st.integers(min_value=0, max_value=MAX_PLAN_BOOST)
non_critical = st.sampled_from([Priority.LOW, Priority.NORMAL, Priority.HIGH])


def test_priority_levels_run_from_low_to_critical() -> None:
    assert [p.level for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH)] == [0, 1, 2]
    assert Priority.CRITICAL.level == 3


def test_unknown_priority_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="urgent"):
        Priority.parse("urgent")
    assert Priority.parse("high") is Priority.HIGH


def test_effective_priority_adds_the_plan_boost() -> None:
    assert effective_priority(Priority.NORMAL, PLANS["enterprise"].plan_boost) == 3
    assert effective_priority(Priority.HIGH, PLANS["free"].plan_boost) == 2
    assert effective_priority(Priority.LOW, PLANS["standard"].plan_boost) == 1


def test_an_enterprise_normal_outranks_a_free_high() -> None:
    enterprise, free = PLANS["enterprise"].plan_boost, PLANS["free"].plan_boost
    assert effective_priority(Priority.NORMAL, enterprise) > effective_priority(Priority.HIGH, free)


@settings(deadline=None)  # wall-clock limits flake on a busy machine
@given(critical_boost=boosts, boost=boosts, priority=non_critical)
def test_critical_outranks_every_non_critical_of_any_plan(
    critical_boost: int, boost: int, priority: Priority
) -> None:
    critical = effective_priority(Priority.CRITICAL, critical_boost)
    assert critical >= CRITICAL_BAND > effective_priority(priority, boost)


@pytest.mark.parametrize("boost", [-1, MAX_PLAN_BOOST + 1])
def test_plan_boost_out_of_range_is_refused(boost: int) -> None:
    with pytest.raises(InvalidInput):
        effective_priority(Priority.LOW, boost)


def test_a_waiting_task_gains_one_band_per_ageing_period() -> None:
    def band(now: float) -> int:
        return aged_band(Priority.LOW, 0, enqueued_at=0.0, now=now, aging_seconds=60.0)

    assert [band(t) for t in (0.0, 59.9, 60.0, 150.0, 600.0)] == [0, 0, 1, 2, 10]


@settings(deadline=None)  # wall-clock limits flake on a busy machine
@given(
    a_enqueued=st.floats(0, 10_000),
    b_enqueued=st.floats(0, 10_000),
    a=non_critical,
    b=non_critical,
    later=st.floats(0, 10_000),
    aging=st.sampled_from([1.0, 7.5, 60.0, 300.0]),
)
def test_ageing_never_reorders_two_waiting_tasks(
    a_enqueued: float,
    b_enqueued: float,
    a: Priority,
    b: Priority,
    later: float,
    aging: float,
) -> None:
    now = max(a_enqueued, b_enqueued)

    def diff(at: float) -> int:
        a_band = aged_band(a, 0, enqueued_at=a_enqueued, now=at, aging_seconds=aging)
        b_band = aged_band(b, 0, enqueued_at=b_enqueued, now=at, aging_seconds=aging)
        return a_band - b_band

    assert diff(now) == diff(now + later)


def test_requirements_refuse_negative_gpus() -> None:
    with pytest.raises(InvalidInput):
        Requirements(gpu=-1)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.QUEUED, S.DISPATCHED),
        (S.DISPATCHED, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
        (S.RUNNING, S.BLOCKED),
        (S.RUNNING, S.FAILED),
        (S.QUEUED, S.CANCELLED),
        (S.DISPATCHED, S.CANCELLED),
        (S.RUNNING, S.CANCELLED),
        (S.QUEUED, S.EXPIRED),
        (S.DISPATCHED, S.QUEUED),
        (S.RUNNING, S.QUEUED),
        (S.DISPATCHED, S.FAILED),
        (S.DISPATCHED, S.EXPIRED),  # the deadline passed while it ran: its handler is stopped
        (S.RUNNING, S.EXPIRED),
        (S.QUEUED, S.FAILED),  # the one agent it was sent to is gone for good
    ],
)
def test_the_task_lifecycle_allows(current: TaskState, target: TaskState) -> None:
    assert can_transition(current, target)
    check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.QUEUED, S.RUNNING),
        (S.QUEUED, S.COMPLETED),
        (S.COMPLETED, S.CANCELLED),
        (S.CANCELLED, S.QUEUED),
        (S.EXPIRED, S.QUEUED),
    ],
)
def test_the_task_lifecycle_refuses_with_a_conflict(current: TaskState, target: TaskState) -> None:
    assert not can_transition(current, target)
    with pytest.raises(Conflict) as caught:
        check_transition(current, target)
    assert caught.value.details == {"state": current.value, "target": target.value}


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_states_go_nowhere(state: TaskState) -> None:
    assert state.is_terminal
    assert not any(can_transition(state, target) for target in TaskState)
