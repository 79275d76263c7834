"""The scheduler's per-org state and its lanes: the queues a decision picks from.

A lane holds one org's queued tasks for one role (or addressed to one agent) in rank order.
Most tasks have no deadline and arrive in order, so tasks without a deadline that share a band
and an ageing epoch wait in a FIFO run (a deque), and a tiny heap orders the runs; only tasks
with a deadline sit in a heap of their own. Taking the head is then O(1) in the common case,
which matters at a million tasks, where every level of a large heap is a cache miss.

Internal to :mod:`corral.scheduling`; items are ``(rank, task)`` pairs (see :mod:`.ranks`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from heapq import heappop, heappush
from typing import Generic, Protocol, TypeVar

from corral.domain.ids import AgentId, OrgId
from corral.domain.tasks import Priority, effective_priority
from corral.scheduling.ranks import SEQ_BITS

__all__ = ["Lane", "LaneKey", "OrgState"]


class _HasDeadline(Protocol):
    @property
    def deadline(self) -> float | None: ...


T = TypeVar("T", bound=_HasDeadline)
LaneKey = tuple[str | None, AgentId | None]  # (role, addressed agent)


class OrgState(Generic[T]):
    """One org as the scheduler tracks it: plan, running work, fair-share position, lanes."""

    __slots__ = (
        "id",
        "weight",
        "plan_boost",
        "bands",
        "running",
        "served",
        "share",
        "vtime",
        "queued",
        "by_role",
        "lanes",
        "arrivals",
    )

    def __init__(self, org_id: OrgId, weight: float, plan_boost: int) -> None:
        self.id = org_id
        self.weight = weight
        self.plan_boost = plan_boost
        self.bands = {p: effective_priority(p, plan_boost) for p in Priority}
        self.running = 0  # tasks dispatched or running
        self.served = 0  # tasks ever handed out
        self.queued = 0
        self.by_role: dict[str | None, int] = {}  # queued tasks for a role (not one agent)
        self.lanes: dict[LaneKey, Lane[T]] = {}
        #: (enqueue time, sequence, task) of each task queued, a heap; entries of tasks
        #: since taken stay until they reach the top or the queue empties (see
        #: ``Scheduler.oldest``)
        self.arrivals: list[tuple[float, int, T]] = []
        self.share = self.vtime = 0.0
        self.reweigh()

    def reweigh(self) -> None:
        # Sainte-Laguë: comparing (running + 1/2) / weight apportions the running slots in
        # proportion to the weights without favouring small or large weights, where
        # running / weight would round every small org up (a free org's 8.6 slots become 9).
        self.share = (self.running + 0.5) / self.weight
        self.vtime = self.served / self.weight  # breaks ties between equal shares


class Lane(Generic[T]):
    __slots__ = (
        "org",
        "key",
        "heap",
        "runs",
        "run_keys",
        "version",
        "listed",
        "parked",
        "reason",
    )

    def __init__(self, org: OrgState[T], key: LaneKey) -> None:
        self.org = org
        self.key = key
        self.heap: list[tuple[int, T]] = []  # the tasks with a deadline
        self.runs: dict[int, deque[tuple[int, T]]] = {}  # band-and-deadline → FIFO run
        self.run_keys: list[int] = []  # heap of the runs' band-and-deadline parts
        self.version = 0  # bumped whenever the lane's top-level entry is superseded
        self.listed = 0  # the head's rank when the current top-level entry was pushed
        self.parked = False  # its head's placement said wait
        self.reason = ""

    def __lt__(self, other: Lane[T]) -> bool:
        # Two top-level entries of one lane can tie on every key (a put-back task listed
        # again at the same version); heapq then compares the lanes themselves.
        return id(self) < id(other)

    def push(self, item: tuple[int, T]) -> None:
        if item[1].deadline is not None:
            heappush(self.heap, item)
            return
        band_deadline = item[0] >> SEQ_BITS
        run = self.runs.get(band_deadline)
        if run is None:
            self.runs[band_deadline] = deque((item,))
            heappush(self.run_keys, band_deadline)
        elif item[0] > run[-1][0]:
            run.append(item)  # the common case: arrivals come in order
        elif item[0] < run[0][0]:
            run.appendleft(item)  # a task put back where it was
        else:
            ordered = sorted((*run, item), key=_rank)
            run.clear()
            run.extend(ordered)

    def first(self) -> tuple[int, T] | None:
        """The head, or ``None`` if the lane is empty."""
        heap = self.heap
        if self.run_keys:
            item = self.runs[self.run_keys[0]][0]
            return heap[0] if heap and heap[0][0] < item[0] else item
        return heap[0] if heap else None

    def pop(self) -> tuple[int, T]:
        """Remove and return the head (the lane must not be empty)."""
        heap, keys = self.heap, self.run_keys
        if keys:
            band_deadline = keys[0]
            run = self.runs[band_deadline]
            if not heap or run[0][0] < heap[0][0]:
                item = run.popleft()
                if not run:
                    heappop(keys)
                    del self.runs[band_deadline]
                return item
        return heappop(heap)

    def __iter__(self) -> Iterator[tuple[int, T]]:
        """Every item, in no particular order."""
        yield from self.heap
        for run in self.runs.values():
            yield from run

    def __bool__(self) -> bool:
        return bool(self.heap) or bool(self.run_keys)

    def rebuild(self, items: Iterable[tuple[int, T]]) -> None:
        """Replace the contents with ``items`` (after re-ranking or dropping dead ones)."""
        self.heap = []
        self.runs = {}
        self.run_keys = []
        for item in sorted(items, key=_rank):
            self.push(item)  # in rank order, runs fill in FIFO order


def _rank(item: tuple[int, object]) -> int:
    return item[0]
