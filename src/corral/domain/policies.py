"""What a task may cost before the platform gives up on it: its retry policy and its timeouts.

**Retries.** A task is tried at most ``max_attempts`` times. An attempt fails when its handler
raises, when its agent is lost while running it (a crash, a lost heartbeat), or when it runs
past a timeout; the next attempt waits ``initial_backoff × multiplier^(n-1)`` seconds (at most
``max_backoff``) after the n-th. An error whose type is named in ``non_retryable`` fails the
task at once. ``Blocked`` — the agent's explicit "I cannot do this" — is never retried.

**Timeouts.** ``run_timeout`` bounds one attempt from dispatch to its end (start-to-close);
``heartbeat_timeout``, if set, bounds the silence between two progress reports of a running
attempt (``ctx.progress`` is the heartbeat). A task's ``deadline`` is a third bound: past it
the task ends ``expired``, whether it waits or runs.

Each plan carries the defaults (:attr:`corral.domain.plans.Plan.task_policy`); a submitter may
override any field. The policy a task was accepted with travels with it, so a later change of
plan does not change it. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from corral.domain.errors import InvalidInput

__all__ = [
    "DEFAULT_TASK_POLICY",
    "MAX_ATTEMPTS_LIMIT",
    "MAX_SECONDS",
    "RetryPolicy",
    "TaskPolicy",
    "parse_duration",
]

#: The most attempts a policy may ask for.
MAX_ATTEMPTS_LIMIT = 100
#: The longest backoff or timeout a policy may name: 30 days.
MAX_SECONDS = 30 * 86400.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ERROR_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")


def parse_duration(value: object, *, what: str) -> float:
    """Seconds from a number of seconds or a string like ``250ms``, ``30s``, ``10m``, ``2h``.

    Raises:
        InvalidInput: not a positive duration of at most 30 days.
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds is None or not math.isfinite(seconds) or not 0 < seconds <= MAX_SECONDS:
        raise InvalidInput(
            f"{what} must be a positive duration up to 30d, like 30s, 10m or 2h; got {value!r}",
            details={"field": what},
        )
    return seconds


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff: float = 0.25
    max_backoff: float = 30.0
    multiplier: float = 2.0
    non_retryable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidInput(
                f"maxAttempts must be between 1 and {MAX_ATTEMPTS_LIMIT}",
                details={"field": "retry.maxAttempts"},
            )
        if not 1.0 <= self.multiplier <= 100.0:
            raise InvalidInput(
                "the backoff multiplier must be between 1 and 100",
                details={"field": "retry.multiplier"},
            )
        if self.max_backoff < self.initial_backoff:
            raise InvalidInput(
                "maxBackoff must not be shorter than initialBackoff",
                details={"field": "retry.maxBackoff"},
            )
        for name in self.non_retryable:
            if not _ERROR_TYPE.match(name):
                raise InvalidInput(
                    f"{name!r} is not an error type name",
                    details={"field": "retry.nonRetryable"},
                )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th attempt (1 for the first) failed."""
        exponent = min(max(attempt - 1, 0), 1000)
        try:
            wait = self.initial_backoff * self.multiplier**exponent
        except OverflowError:
            wait = self.max_backoff
        return min(self.max_backoff, wait)

    def gives_up(self, attempts: int, error_type: str | None = None) -> bool:
        """Whether a failure of the ``attempts``-th attempt (of ``error_type``) is final."""
        if error_type is not None and error_type in self.non_retryable:
            return True
        return attempts >= self.max_attempts

    def to_wire(self) -> dict[str, Any]:
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": self.initial_backoff,
            "maxBackoff": self.max_backoff,
            "multiplier": self.multiplier,
            "nonRetryable": list(self.non_retryable),
        }

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any], *, base: RetryPolicy) -> RetryPolicy:
        """``base`` with the fields ``obj`` names replaced.

        Raises:
            InvalidInput: an unknown field or a value out of range.
        """
        _known(obj, ("maxAttempts", "initialBackoff", "maxBackoff", "multiplier", "nonRetryable"))
        out = base
        if "maxAttempts" in obj:
            n = obj["maxAttempts"]
            if not isinstance(n, int) or isinstance(n, bool):
                raise InvalidInput("maxAttempts must be a whole number")
            out = replace(out, max_attempts=n)
        initial, most = out.initial_backoff, out.max_backoff
        if "initialBackoff" in obj:
            initial = parse_duration(obj["initialBackoff"], what="initialBackoff")
        if "maxBackoff" in obj:
            most = parse_duration(obj["maxBackoff"], what="maxBackoff")
        # the first wait is capped at the longest, whichever of the two was given
        out = replace(out, initial_backoff=min(initial, most), max_backoff=most)
        if "multiplier" in obj:
            m = obj["multiplier"]
            if not isinstance(m, int | float) or isinstance(m, bool):
                raise InvalidInput("multiplier must be a number")
            out = replace(out, multiplier=float(m))
        if "nonRetryable" in obj:
            names = obj["nonRetryable"]
            if isinstance(names, str):
                names = [n for n in names.split(",") if n.strip()]
            if not isinstance(names, list) or len(names) > 32:
                raise InvalidInput("nonRetryable must list at most 32 error type names")
            out = replace(out, non_retryable=tuple(str(n).strip() for n in names))
        return out


@dataclass(frozen=True, slots=True)
class TaskPolicy:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    run_timeout: float | None = None  # seconds from dispatch to the attempt's end
    heartbeat_timeout: float | None = None  # seconds between progress reports while running

    def to_wire(self) -> dict[str, Any]:
        return {
            "retry": self.retry.to_wire(),
            "runTimeout": self.run_timeout,
            "heartbeatTimeout": self.heartbeat_timeout,
        }

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any] | None, *, base: TaskPolicy) -> TaskPolicy:
        """``base`` with the fields ``obj`` names replaced (``null`` clears a timeout).

        Raises:
            InvalidInput: an unknown field or a value out of range.
        """
        if not obj:
            return base
        if not isinstance(obj, Mapping):
            raise InvalidInput("a task policy must be an object")
        _known(obj, ("retry", "runTimeout", "heartbeatTimeout"))
        out = base
        if obj.get("retry") is not None:
            retry = obj["retry"]
            if not isinstance(retry, Mapping):
                raise InvalidInput("retry must be an object")
            out = replace(out, retry=RetryPolicy.from_wire(retry, base=base.retry))
        if "runTimeout" in obj:
            out = replace(out, run_timeout=_seconds(obj["runTimeout"], what="runTimeout"))
        if "heartbeatTimeout" in obj:
            value = _seconds(obj["heartbeatTimeout"], what="heartbeatTimeout")
            out = replace(out, heartbeat_timeout=value)
        return out


def _seconds(value: object, *, what: str) -> float | None:
    return None if value is None else parse_duration(value, what=what)


def _known(obj: Mapping[str, Any], fields: tuple[str, ...]) -> None:
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise InvalidInput(
            f"unknown field(s) {', '.join(unknown)}: use {', '.join(fields)}",
            details={"fields": unknown},
        )


#: What a task gets when neither its submitter nor its plan says otherwise.
DEFAULT_TASK_POLICY = TaskPolicy(RetryPolicy(), run_timeout=6 * 3600.0)
