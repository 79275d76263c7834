"""Scheduling: which queued task runs next, and where. Pure, no I/O.

What belongs here: the cross-tenant task queue (priority bands with plan boost, deadlines,
weighted fair share counting running work, ageing) and the placement decision (idle agent →
paused agent → new agent → wait). What must not: any store, bus, runtime or clock. Callers
hand in ``now``, a snapshot of agents and a quota predicate; the dispatcher in
``corral.control`` turns decisions into effects.
"""

from corral.scheduling.placement import (
    PROVISION,
    Action,
    AgentAvailability,
    AgentView,
    Placeable,
    Placement,
    fits,
    place,
    use,
    wait,
    wake,
)
from corral.scheduling.scheduler import Decision, Placer, QueuedTask, Scheduler

__all__ = [
    "PROVISION",
    "Action",
    "AgentAvailability",
    "AgentView",
    "Decision",
    "Placeable",
    "Placement",
    "Placer",
    "QueuedTask",
    "Scheduler",
    "fits",
    "place",
    "use",
    "wait",
    "wake",
]
