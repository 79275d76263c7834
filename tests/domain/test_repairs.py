"""The one decision of start-up recovery and the periodic reconciler: an agent's record and
what runs → what to do about it, and whether the work it holds is lost."""

import pytest

from corral.domain.agents import AgentState
from corral.domain.repairs import Repair, repair, work_lost

S = AgentState


@pytest.mark.parametrize(
    ("state", "process_running", "expected"),
    [
        (S.RUNNING, True, Repair.RESTART),  # its process lost its work with the control plane
        (S.RUNNING, False, Repair.RESTART),
        (S.PROVISIONING, True, Repair.RESTART),
        (S.RESUMING, False, Repair.RESTART),
        (S.PAUSING, True, Repair.FINISH_PAUSE),
        (S.PAUSING, False, Repair.FINISH_PAUSE),
        (S.PAUSED, True, Repair.STOP),
        (S.TERMINATED, True, Repair.STOP),
        (S.FAILED, True, Repair.STOP),
        (S.PAUSED, False, Repair.NOTHING),
        (S.FAILED, False, Repair.NOTHING),
        (None, True, Repair.STOP),  # a process no record has
        (None, False, Repair.NOTHING),
    ],
)
def test_after_a_restart_what_should_run_runs_again_and_nothing_else_does(
    state: AgentState | None, process_running: bool, expected: Repair
) -> None:
    assert repair(state, process_running=process_running, after_restart=True) is expected


@pytest.mark.parametrize("state", [S.RUNNING, S.PROVISIONING, S.PAUSING, S.PAUSED])
def test_after_a_restart_the_agents_of_an_org_being_deleted_are_stopped(state: AgentState) -> None:
    assert repair(state, process_running=True, after_restart=True, org_deleting=True) is Repair.STOP
    assert (
        repair(state, process_running=False, after_restart=True, org_deleting=True)
        is Repair.NOTHING
    )


def test_periodically_only_a_running_agent_without_a_process_is_restarted() -> None:
    assert repair(S.RUNNING, process_running=False, after_restart=False) is Repair.RESTART
    assert repair(S.RUNNING, process_running=True, after_restart=False) is Repair.NOTHING
    # a start that failed with nobody to try it again: started again
    for state in (S.PROVISIONING, S.RESUMING):
        assert repair(state, process_running=False, after_restart=False) is Repair.RESTART
        assert (
            repair(state, process_running=False, after_restart=False, start_under_way=True)
            is Repair.NOTHING
        )
    # a pause whose finishing failed with nobody to try it again: finished
    assert repair(S.PAUSING, process_running=False, after_restart=False) is Repair.FINISH_PAUSE
    assert (
        repair(S.PAUSING, process_running=False, after_restart=False, start_under_way=True)
        is Repair.NOTHING
    )
    assert repair(S.PAUSING, process_running=True, after_restart=False) is Repair.NOTHING
    # every other state's process is settled by a transition under way, announced by events
    for state in (*S, None):
        if state not in (S.RUNNING, S.PROVISIONING, S.RESUMING, S.PAUSING):
            for process_running in (True, False):
                assert (
                    repair(state, process_running=process_running, after_restart=False)
                    is Repair.NOTHING
                )
    for state in (S.PROVISIONING, S.RESUMING):
        assert repair(state, process_running=True, after_restart=False) is Repair.NOTHING


def test_after_a_restart_all_held_work_is_lost() -> None:
    for state in (*S, None):
        assert work_lost("agt_1", state, after_restart=True) == "the control plane restarted"


def test_periodically_work_is_lost_when_its_agent_neither_runs_it_nor_releases_it() -> None:
    assert work_lost("agt_1", S.RUNNING, after_restart=False) is None
    assert work_lost("agt_1", S.PAUSING, after_restart=False) is None  # its pause releases it
    assert work_lost("agt_1", None, after_restart=False) == "agent agt_1 does not exist"
    assert work_lost("agt_1", S.PAUSED, after_restart=False) == "agent agt_1 is paused"
    assert work_lost("agt_1", S.FAILED, after_restart=False) == "agent agt_1 is failed"
    assert work_lost("agt_1", S.PROVISIONING, after_restart=False) == (
        "agent agt_1 is provisioning"
    )
