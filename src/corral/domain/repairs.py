"""What to do about an agent, from its record and what runs: the one decision that start-up
recovery and the periodic reconciler both take.

After a restart of the control plane every agent process left from before lost its work with
it: what should run is started again, an interrupted pause is finished, anything else that
runs is stopped. Afterwards the agents' own events announce every transition but two — an
exit nobody heard, and a start that failed with nobody to try it again — so a periodic check
repairs those: an agent recorded running whose process is gone is restarted as after a crash,
and one left starting with no process and no start under way is started again. Work held by an agent is lost when the control
plane restarted, or when the agent is not running and no transition of its own (a pause)
will release it.

No I/O here: the callers look at the store and the runtime and act on the answer.
"""

from __future__ import annotations

from enum import StrEnum

from corral.domain.agents import AgentState

__all__ = ["SHOULD_RUN", "Repair", "repair", "work_lost"]


class Repair(StrEnum):
    NOTHING = "nothing"
    #: a process runs that nothing should: stop it
    STOP = "stop"
    #: the agent should run: stop what is left of its process, start it again
    RESTART = "restart"
    #: its pause was interrupted: stop its process, record it paused
    FINISH_PAUSE = "finish pause"


#: the states whose agent should be running again after the control plane restarted
SHOULD_RUN = frozenset({AgentState.RUNNING, AgentState.PROVISIONING, AgentState.RESUMING})
#: the states of an agent being started
_STARTING = frozenset({AgentState.PROVISIONING, AgentState.RESUMING})
#: the states in which the agent's own transition releases the work it holds
_RELEASING = frozenset({AgentState.PAUSING})


def repair(
    state: AgentState | None,
    *,
    process_running: bool,
    after_restart: bool,
    org_deleting: bool = False,
    start_under_way: bool = False,
) -> Repair:
    """What to do about one agent.

    Args:
        state: its recorded state; None when no record has the process's agent.
        process_running: whether the runtime has its process (or pod) alive.
        after_restart: the control plane has just started (every process left from before
            lost its work); False for the periodic check.
        org_deleting: its org is being deleted (its agents go with it).
        start_under_way: a provision, pause, resume or restart of it is scheduled or running
            (the periodic check leaves an agent that is changing alone while it is).

    Returns:
        The repair; :attr:`Repair.NOTHING` when record and runtime agree, or a transition
        under way will settle it.
    """
    if not after_restart:
        if state is AgentState.RUNNING and not process_running:
            return Repair.RESTART  # its exit was never heard
        if state in _STARTING and not process_running and not start_under_way:
            return Repair.RESTART  # a start failed and left it starting (the bus was away)
        if state is AgentState.PAUSING and not process_running and not start_under_way:
            return Repair.FINISH_PAUSE  # finishing an interrupted pause failed (the same)
        return Repair.NOTHING
    if state is None or org_deleting:
        return Repair.STOP if process_running else Repair.NOTHING
    if state in SHOULD_RUN:
        return Repair.RESTART
    if state is AgentState.PAUSING:
        return Repair.FINISH_PAUSE
    return Repair.STOP if process_running else Repair.NOTHING


def work_lost(agent_id: str, state: AgentState | None, *, after_restart: bool) -> str | None:
    """Why the work ``agent_id`` holds is lost, as the tasks' retry reason; None when it is
    not (the agent runs it, or its own pause will release it).

    Args:
        agent_id: the agent holding the work.
        state: its recorded state; None when it has no record.
        after_restart: the control plane has just started.
    """
    if after_restart:
        return "the control plane restarted"
    if state is None:
        return f"agent {agent_id} does not exist"
    if state is AgentState.RUNNING or state in _RELEASING:
        return None
    return f"agent {agent_id} is {state.value}"
