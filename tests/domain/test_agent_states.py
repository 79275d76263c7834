"""The agent state machine the controller's every transition is held to."""

import pytest

from corral.domain.agents import AgentState, require_transition
from corral.domain.errors import Conflict

S = AgentState


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.PROVISIONING, S.RUNNING),
        (S.RUNNING, S.PAUSING),
        (S.PAUSING, S.PAUSED),
        (S.PAUSED, S.RESUMING),
        (S.RESUMING, S.RUNNING),
        (S.FAILED, S.RESUMING),
        (S.PROVISIONING, S.PROVISIONING),  # a crash while starting: restarted
        (S.RESUMING, S.PROVISIONING),  # a crash while resuming: restarted
        (S.RESUMING, S.RESUMING),  # the reconciler restarts a resuming agent
        (S.RUNNING, S.PROVISIONING),  # a crash while running: restarted
    ],
)
def test_the_lifecycle_and_restart_edges_are_allowed(current: S, target: S) -> None:
    require_transition("agent-a", current, target)


@pytest.mark.parametrize("target", list(S))
def test_a_terminated_agent_stays_terminated(target: S) -> None:
    with pytest.raises(Conflict, match="terminated"):
        require_transition("agent-a", S.TERMINATED, target)


def test_a_paused_agent_cannot_run_without_resuming() -> None:
    with pytest.raises(Conflict, match="cannot become running"):
        require_transition("agent-a", S.PAUSED, S.RUNNING)
