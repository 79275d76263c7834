"""A task's place in the order, packed into one integer so that heaps compare it in one step.

Tuples such as ``(key, deadline, seq)`` make every heap comparison walk several elements when
most tasks share a band and have no deadline; at a million tasks that comparison is most of the
cost of a decision. One integer holds the same order::

    rank = ((key + 2**63) << 61 | deadline code) << 48 | seq

- ``key`` is ``epoch(enqueued_at) - band``, minus 2**62 for critical tasks (the critical tier):
  smaller ranks first, so higher and older bands first.
- the deadline code is the deadline in whole microseconds, offset so that it is never negative;
  no deadline is the largest code, so it sorts last.
- ``seq`` is the arrival number: the final, FIFO tie-break.

``rank >> SEQ_BITS`` is the *band-and-deadline* part a top-level heap compares before fair
share.
"""

from __future__ import annotations

import math

from corral.domain.errors import InvalidInput
from corral.domain.tasks import Priority, age_epoch

__all__ = ["SEQ_BITS", "band_deadline", "key_of", "rank_of", "seq_of"]

SEQ_BITS = 48  # 2.8e14 arrivals before the counter would wrap
_SEQ_MASK = (1 << SEQ_BITS) - 1
_DEADLINE_BITS = 61
_NO_DEADLINE = (1 << _DEADLINE_BITS) - 1
_DEADLINE_OFFSET = 1 << 59  # microseconds: deadlines within ±18,000 years of the clock's zero
_KEY_OFFSET = 1 << 63
_CRITICAL_LIFT = 1 << 62  # below every non-critical key whatever the epochs: the critical tier
_MAX_EPOCH = 1 << 60


def key_of(priority: Priority, band: int, enqueued_at: float, aging_seconds: float) -> int:
    """The ageing order key: smaller is first; see :mod:`corral.domain.tasks`.

    Raises:
        InvalidInput: ``enqueued_at`` is not finite or so far from the clock's zero, in
            ageing periods, that the key would not fit its bits.
    """
    if not math.isfinite(enqueued_at):
        raise InvalidInput(f"enqueue time must be a finite number, got {enqueued_at}")
    epoch = age_epoch(enqueued_at, aging_seconds)
    if not -_MAX_EPOCH < epoch < _MAX_EPOCH:
        raise InvalidInput(f"enqueue time {enqueued_at} is out of range")
    key = epoch - band
    return key - _CRITICAL_LIFT if priority is Priority.CRITICAL else key


def _deadline_code(deadline: float | None) -> int:
    if deadline is None:
        return _NO_DEADLINE
    if deadline == math.inf:
        return _NO_DEADLINE
    if deadline == -math.inf:
        return 0
    return min(max(0, math.floor(deadline * 1_000_000) + _DEADLINE_OFFSET), _NO_DEADLINE - 1)


def rank_of(key: int, deadline: float | None, seq: int) -> int:
    return (((key + _KEY_OFFSET) << _DEADLINE_BITS) | _deadline_code(deadline)) << SEQ_BITS | (
        seq & _SEQ_MASK
    )


def band_deadline(rank: int) -> int:
    return rank >> SEQ_BITS


def seq_of(rank: int) -> int:
    return rank & _SEQ_MASK
