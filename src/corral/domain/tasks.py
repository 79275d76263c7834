"""Tasks: priorities, the band rule, ageing, requirements and the task state machine.

**Bands.** A task's effective priority (its *band*) is its priority level plus its org's plan
boost: ``low`` 0, ``normal`` 1, ``high`` 2, plus 0 (free), 1 (standard) or 2 (enterprise). So
an enterprise ``normal`` (1 + 2 = 3) ranks above a free ``high`` (2 + 0 = 2). ``critical`` is
the exception: it forms a tier of its own above every non-critical task of any plan; within
that tier its band is :data:`CRITICAL_BAND` plus the plan boost. Plan boosts lie in
``0..MAX_PLAN_BOOST``, so no non-critical band reaches the critical tier.

**Order.** Higher band first; among equal bands the earliest deadline (none = last), then the
org furthest below its weighted fair share (running work divided by weight), then the oldest.

**Ageing.** So that no task starves, a waiting task gains one band each time the clock passes a
multiple of ``aging_seconds`` (its *epoch* advances): after waiting ``w`` seconds it has gained
``floor(w / aging_seconds)`` or one more. Ageing moves a task up within its tier and never into
the critical tier. Because every waiting task gains bands at the same instants, the relative
order of two waiting tasks never changes with time: it is the order of
``(tier, band - epoch_at_enqueue)``, which a queue computes once at enqueue and never rescores.
A non-critical task of band ``b`` enqueued in epoch ``e`` can be passed by a later non-critical
task of band ``b'`` only if that one arrives by epoch ``e + b' - b``; after that only critical
work can pass it, so it waits a bounded time unless critical work alone saturates the platform
(or its own org cannot place it).

**States.** ``queued → dispatched → running → completed | blocked | failed``; any non-terminal
state may go to ``cancelled``, and to ``expired`` when the deadline passes first (a running
task's handler is then stopped); ``dispatched`` and ``running`` return to ``queued`` on a
retry, and ``dispatched → failed`` when delivery is given up (or the retries are spent);
``queued → failed`` when the one agent it was sent to is gone for good. ``completed``, ``blocked``, ``failed``, ``cancelled`` and
``expired`` are terminal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from corral.domain.errors import Conflict, InvalidInput
from corral.domain.quantities import Quantity

__all__ = [
    "CRITICAL_BAND",
    "MAX_PLAN_BOOST",
    "NO_REQUIREMENTS",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Priority",
    "Requirements",
    "TaskFilter",
    "TaskState",
    "aged_band",
    "age_epoch",
    "can_transition",
    "check_transition",
    "effective_priority",
]

#: The largest plan boost a plan may carry.
MAX_PLAN_BOOST = 100
#: The band of a ``critical`` task before its plan boost: above any non-critical band.
CRITICAL_BAND = 1000


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def level(self) -> int:
        """0 for ``low`` up to 3 for ``critical``."""
        return _LEVELS[self]

    @property
    def is_critical(self) -> bool:
        return self is Priority.CRITICAL

    @classmethod
    def parse(cls, text: str) -> Priority:
        """The priority called ``text``.

        Raises:
            InvalidInput: not one of ``low``, ``normal``, ``high``, ``critical``.
        """
        try:
            return cls(text)
        except ValueError:
            raise InvalidInput(
                f"unknown priority {text!r}: choose one of {', '.join(p.value for p in cls)}",
                details={"priority": text},
            ) from None


_LEVELS: Mapping[Priority, int] = MappingProxyType(
    {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}
)


def effective_priority(priority: Priority, plan_boost: int) -> int:
    """The task's band: level + plan boost, or :data:`CRITICAL_BAND` + boost for ``critical``.

    Raises:
        InvalidInput: ``plan_boost`` outside ``0..MAX_PLAN_BOOST``.
    """
    if not 0 <= plan_boost <= MAX_PLAN_BOOST:
        raise InvalidInput(
            f"plan boost must be between 0 and {MAX_PLAN_BOOST}, got {plan_boost}",
            details={"plan_boost": plan_boost},
        )
    if priority is Priority.CRITICAL:
        return CRITICAL_BAND + plan_boost
    return _LEVELS[priority] + plan_boost


def age_epoch(at: float, aging_seconds: float) -> int:
    """How many multiples of ``aging_seconds`` the clock had passed at ``at``."""
    return math.floor(at / aging_seconds)


def aged_band(
    priority: Priority, plan_boost: int, *, enqueued_at: float, now: float, aging_seconds: float
) -> int:
    """The band of a task that has waited since ``enqueued_at``, seen at ``now``.

    Only comparable between tasks of the same tier (critical or not): the critical tier ranks
    first whatever the bands.
    """
    gained = age_epoch(now, aging_seconds) - age_epoch(enqueued_at, aging_seconds)
    return effective_priority(priority, plan_boost) + max(0, gained)


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a task needs from the agent that runs it; ``None`` means "any amount"."""

    cpu: Quantity | None = None
    memory: Quantity | None = None
    gpu: int = 0

    def __post_init__(self) -> None:
        if self.gpu < 0:
            raise InvalidInput("gpu must not be negative", details={"gpu": self.gpu})


NO_REQUIREMENTS = Requirements()


class TaskState(StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    COMPLETED = "completed"
    BLOCKED = "blocked"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES: frozenset[TaskState] = frozenset(
    {
        TaskState.COMPLETED,
        TaskState.BLOCKED,
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.EXPIRED,
    }
)

_S = TaskState
TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = MappingProxyType(
    {
        _S.QUEUED: frozenset({_S.DISPATCHED, _S.CANCELLED, _S.EXPIRED, _S.FAILED}),
        _S.DISPATCHED: frozenset({_S.RUNNING, _S.QUEUED, _S.FAILED, _S.CANCELLED, _S.EXPIRED}),
        _S.RUNNING: frozenset(
            {_S.COMPLETED, _S.BLOCKED, _S.FAILED, _S.QUEUED, _S.CANCELLED, _S.EXPIRED}
        ),
        **{s: frozenset() for s in TERMINAL_STATES},
    }
)


def can_transition(current: TaskState, target: TaskState) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: TaskState, target: TaskState) -> None:
    """Allow ``current → target`` or refuse it.

    Raises:
        Conflict: the state machine has no such edge (e.g. a completed task cancelled).
    """
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none: it is final"
        raise Conflict(
            f"a {current.value} task cannot become {target.value} (allowed: {allowed})",
            details={"state": current.value, "target": target.value},
        )


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Which of an org's tasks a listing shows; ``None`` fields do not filter."""

    states: tuple[TaskState, ...] | None = None
    role: str | None = None
    agent: str | None = None  # the agent it was sent to or runs on
    priorities: tuple[Priority, ...] | None = None
    parent: str | None = None
