"""Per-organization figures over the last hour, a minute at a time, for the console's charts:
how many tasks waited, how many ended and how long they took from submission to their end.

Bounded whatever happens: each org keeps at most :data:`MINUTES` buckets of four numbers, and
at most :data:`MAX_ORGS` orgs are kept (the least recently active is forgotten first). Fed by
the task book on every transition (a few dictionary operations) and read a page at a time.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_ORGS", "MINUTES", "Minute", "TaskSeries"]

#: how many minutes of history each org keeps
MINUTES = 60
#: how many orgs' histories are kept at once
MAX_ORGS = 10_000


@dataclass(slots=True)
class Minute:
    """One minute of one org: its start (seconds since the epoch, a multiple of 60), the
    deepest its queue was, how many tasks ended and the sum of their latencies (seconds)."""

    start: int
    depth: int = 0
    ended: int = 0
    latency_sum: float = 0.0
    last: int = 0  # the queue depth last seen in it (what the next minute starts with)

    @property
    def mean_latency(self) -> float | None:
        return self.latency_sum / self.ended if self.ended else None


class TaskSeries:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._orgs: OrderedDict[str, deque[Minute]] = OrderedDict()

    def _minute(self, org: str) -> Minute:
        start = int(self._clock() // 60) * 60
        minutes = self._orgs.get(org)
        if minutes is None:
            minutes = self._orgs[org] = deque(maxlen=MINUTES)
            while len(self._orgs) > MAX_ORGS:
                self._orgs.popitem(last=False)
        else:
            self._orgs.move_to_end(org)
        if not minutes or minutes[-1].start != start:
            carried = minutes[-1].last if minutes else 0
            minutes.append(Minute(start, depth=carried, last=carried))
        return minutes[-1]

    def depth(self, org: str, queued: int) -> None:
        """``org`` has ``queued`` tasks waiting now."""
        m = self._minute(org)
        m.depth = max(m.depth, queued)
        m.last = queued

    def ended(self, org: str, latency: float) -> None:
        """A task of ``org`` ended ``latency`` seconds after it was submitted."""
        m = self._minute(org)
        m.ended += 1
        m.latency_sum += max(0.0, latency)

    def forget(self, org: str) -> None:
        self._orgs.pop(org, None)

    def last_hour(self, org: str) -> list[Minute]:
        """``org``'s minutes of the last hour, oldest first, one per minute (minutes with no
        news carry the queue depth last seen)."""
        now = int(self._clock() // 60) * 60
        first = now - (MINUTES - 1) * 60
        kept = self._orgs.get(org, ())
        known = {m.start: m for m in kept}
        before = [m for m in kept if m.start < first]
        depth = before[-1].last if before else 0
        out: list[Minute] = []
        for start in range(first, now + 60, 60):
            m = known.get(start)
            if m is None:
                out.append(Minute(start, depth=depth, last=depth))
            else:
                depth = m.last
                out.append(Minute(m.start, m.depth, m.ended, m.latency_sum, m.last))
        return out
