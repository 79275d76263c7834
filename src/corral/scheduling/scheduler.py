"""The queue of every organization's waiting tasks, and the decision of which one runs next.

**Order.** The rule of :mod:`corral.domain.tasks`: band (priority + plan boost, critical as a
tier above all, aged by waiting time), then the earliest deadline, then the org furthest below
its weighted fair share, then arrival. An org's position is its running work (tasks dispatched
or running) against its weight, compared as ``(running + 1/2) / weight`` so that the running
slots are apportioned in proportion to the weights (Sainte-Laguë); equal positions go to the
org that has been handed fewer tasks per weight. Ageing needs no rescoring: a task's key is
fixed at enqueue as ``epoch(enqueued_at) - band``.

**No head-of-line blocking across tenants.** A task whose placement says *wait* (its org is
full, no agent of its role is free) stays queued and its *lane* is parked; the decision moves
on to the next lane, so other orgs' tasks (and the same org's tasks for other roles) still run.
A lane is the tasks of one org for one role, or addressed to one agent: within a lane tasks
start in rank order. A parked lane is tried again when its org finishes a task
(:meth:`Scheduler.on_finished`), when the caller says capacity changed (:meth:`~Scheduler.wake`)
or when a better task arrives at its head.

**Cost.** O(log n) per operation, no scan of the queue. Each lane (:mod:`.lanes`) yields its
head in rank order; a top-level heap holds an entry per lane ordered by ``(head's band and
deadline, org's share, org's served work, head's arrival)``. Entries are invalidated lazily:
when a lane only gets worse (its head removed, its org's share up) the old entry stays and is
re-checked when it surfaces; when it gets better (a better task, a finished task) a fresh entry
is pushed and the old one is superseded by version. Removed tasks are remembered by rank until
their items surface. Deadlines sit in a third heap so that :meth:`~Scheduler.expire` touches
only what has expired.

**Driving it.** The dispatcher (the only writer; not thread-safe) registers every org with
:meth:`~Scheduler.set_org`, loads running counts with :meth:`~Scheduler.set_running` and queued
tasks with :meth:`~Scheduler.enqueue` on start, then on each round::

    for task in scheduler.expire(now):   # record them expired
        ...
    while (decision := scheduler.pop_next(now, placer)) is not None:
        ...                              # record dispatched, publish, update the agent view
        # or, if it does not start now (waking/provisioning an agent first, agent taken):
        # scheduler.put_back(decision.task)
    # on a task leaving dispatched/running: scheduler.on_finished(org)
    # on an agent becoming idle or quota freed: scheduler.wake(org); a retry: enqueue() again
    # with the first enqueued_at; a cancel: remove()

Pure: no I/O, no clock; ``now`` is always an argument.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from typing import NamedTuple

from corral.domain.errors import Conflict, InvalidInput, NotFound
from corral.domain.ids import AgentId, OrgId, TaskId
from corral.domain.tasks import NO_REQUIREMENTS, Priority, Requirements, effective_priority
from corral.scheduling.lanes import Lane, OrgState
from corral.scheduling.placement import Action, Placement
from corral.scheduling.ranks import SEQ_BITS, key_of, rank_of, seq_of

__all__ = ["Decision", "Placer", "QueuedTask", "Scheduler"]

_SLACK = 1024  # garbage (stale entries, dead items) tolerated before compaction
_ARRIVALS_SLACK = 64  # the same, in each org's arrivals (kept per org: kept small)
_WAIT = Action.WAIT


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """A task as the scheduler sees it. Times are seconds on the caller's clock (e.g. POSIX)."""

    id: TaskId
    org: OrgId
    priority: Priority = Priority.NORMAL
    enqueued_at: float = 0.0  # keep the first enqueue time across retries: it drives ageing
    deadline: float | None = None
    role: str | None = None
    requirements: Requirements = NO_REQUIREMENTS
    agent_id: AgentId | None = None  # addressed to one agent (a delegation), else any


class Decision(NamedTuple):
    task: QueuedTask
    placement: Placement


Placer = Callable[[QueuedTask], Placement]
_Item = tuple[int, QueuedTask]  # (rank, task)
_Org = OrgState[QueuedTask]
_Lane = Lane[QueuedTask]
# (head's band and deadline, org's share, org's vtime, head's rank, lane version, lane)
_Entry = tuple[int, float, float, int, int, _Lane]


class Scheduler:
    """Queued tasks of many orgs; see the module docstring for the order and how to drive it."""

    def __init__(self, *, aging_seconds: float = 300.0) -> None:
        if not (math.isfinite(aging_seconds) and aging_seconds > 0):
            raise InvalidInput("aging_seconds must be a positive number of seconds")
        self._aging = aging_seconds
        self._orgs: dict[OrgId, _Org] = {}
        self._index: dict[TaskId, _Item] = {}
        self._top: list[_Entry] = []
        self._lanes = 0
        self._dead: set[int] = set()  # ranks of removed tasks whose items are still in lanes
        self._deadlines: list[tuple[float, int, QueuedTask]] = []
        self._with_deadline = 0  # queued tasks that have a deadline
        self._expired: list[QueuedTask] = []  # met at a lane's head by pop_next
        self._seq = itertools.count()  # arrival order: the FIFO tie-break
        self._deadline_seq = itertools.count()
        self._last: _Item | None = None  # what pop_next handed out last, for put_back()

    # -- organizations -------------------------------------------------------------------

    def set_org(self, org: OrgId, *, weight: float, plan_boost: int) -> None:
        """Register ``org`` or change its plan (``fair_share_weight`` and ``plan_boost``).

        A changed boost re-ranks that org's queued tasks (O(k log k) for its k tasks).

        Raises:
            InvalidInput: a weight that is not positive, or a boost out of range.
        """
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
            raise InvalidInput(f"fair-share weight must be positive, got {weight!r}")
        effective_priority(Priority.LOW, plan_boost)  # validates the boost
        state = self._orgs.get(org)
        if state is None:
            self._orgs[org] = OrgState(org, weight, plan_boost)
            return
        state.weight = weight
        state.reweigh()
        if plan_boost == state.plan_boost:
            self._relist(state, unpark=False)
            return
        state.plan_boost = plan_boost
        state.bands = {p: effective_priority(p, plan_boost) for p in Priority}
        self._rekey(state)
        for lane in list(state.lanes.values()):
            if not lane.parked:
                self._list(lane)  # ranks changed: list from the new heads

    def drop_org(self, org: OrgId) -> list[QueuedTask]:
        """Forget ``org``; returns its tasks that were still queued."""
        state = self._orgs.get(org)
        if state is None:
            return []
        dropped = [item[1] for item in self._live_items(state)]
        for task in dropped:
            self._forget(task)
        for lane in state.lanes.values():
            lane.version += 1
        self._lanes -= len(state.lanes)
        del self._orgs[org]
        return dropped

    def set_running(self, org: OrgId, running: int) -> None:
        """Set how many of ``org``'s tasks are dispatched or running (on start-up)."""
        state = self._org(org)
        state.running = max(0, running)
        state.reweigh()
        self._relist(state, unpark=False)

    def on_started(self, org: OrgId) -> None:
        """Count one more running task for ``org`` that did not come from :meth:`pop_next`."""
        state = self._org(org)
        state.running += 1
        state.reweigh()

    def on_finished(self, org: OrgId) -> None:
        """One of ``org``'s tasks left dispatched/running (finished, failed, cancelled, or
        retried). Lowers its share and tries its parked lanes again."""
        state = self._orgs.get(org) or self._org(org)
        if state.running > 0:
            state.running -= 1
        state.reweigh()
        self._relist(state, unpark=True)

    def wake(self, org: OrgId) -> None:
        """Capacity changed for ``org`` (an agent became idle, quota was freed): try its parked
        lanes again."""
        state = self._org(org)
        for lane in list(state.lanes.values()):
            if lane.parked:
                lane.parked = False
                self._list(lane)

    def wake_all(self) -> None:
        for org in self._orgs:
            self.wake(org)

    def running(self, org: OrgId) -> int:
        return self._org(org).running

    def queued(self, org: OrgId) -> int:
        return self._org(org).queued

    def oldest(self, org: OrgId) -> float | None:
        """When the longest-waiting of ``org``'s queued tasks was first enqueued; ``None`` if
        none is queued. Amortised O(log n): what has left the queue is dropped from the top
        as it is met, and compacted away once it outnumbers what is queued."""
        state = self._orgs.get(org)
        if state is None or not state.queued:
            return None
        arrivals = state.arrivals
        while arrivals:
            task = arrivals[0][2]
            if self._queued_now(task):
                return task.enqueued_at
            heappop(arrivals)
        return None

    def queued_for(self, org: OrgId, role: str | None) -> int:
        """Tasks of ``org`` queued for ``role`` (not those addressed to one agent)."""
        state = self._orgs.get(org)
        return 0 if state is None else state.by_role.get(role, 0)

    # -- tasks -----------------------------------------------------------------------------

    def enqueue(self, task: QueuedTask) -> None:
        """Queue ``task``.

        Raises:
            NotFound: its org was not registered with :meth:`set_org`.
            Conflict: a task with this id is already queued.
            InvalidInput: a deadline that is not a number, an enqueue time that is not finite.
        """
        org = self._orgs.get(task.org) or self._org(task.org)
        self._insert(org, task, next(self._seq))

    def put_back(self, task: QueuedTask) -> None:
        """Undo :meth:`pop_next` for a task that did not start after all (its placement wakes
        or provisions an agent first, or the agent was taken meanwhile).

        The task regains its place in the queue if it is the one handed out last, and its
        org's running and served counts drop back. The lane is not parked: if the task still
        cannot be placed, the next decision's placement says so.

        Raises:
            NotFound: its org is no longer registered.
            Conflict: the task is queued already.
        """
        org = self._orgs.get(task.org) or self._org(task.org)
        last = self._last
        if last is not None and last[1] is task:
            self._insert(org, task, seq_of(last[0]))
            self._last = None
        else:
            self._insert(org, task, next(self._seq))
        org.running = max(0, org.running - 1)
        org.served = max(0, org.served - 1)
        org.reweigh()
        self._relist(org, unpark=False)

    def _insert(self, org: _Org, task: QueuedTask, seq: int) -> None:
        if task.id in self._index:
            raise Conflict(f"task {task.id} is already queued", details={"task": task.id})
        deadline = task.deadline
        if deadline is not None and math.isnan(deadline):
            raise InvalidInput(f"task {task.id} has a deadline that is not a number")
        key = key_of(task.priority, org.bands[task.priority], task.enqueued_at, self._aging)
        item = (rank_of(key, deadline, seq), task)
        self._index[task.id] = item
        org.queued += 1
        if task.agent_id is None:
            org.by_role[task.role] = org.by_role.get(task.role, 0) + 1
        if deadline is not None:
            self._with_deadline += 1
            heappush(self._deadlines, (deadline, next(self._deadline_seq), task))
        heappush(org.arrivals, (task.enqueued_at, seq, task))
        if len(org.arrivals) > 2 * org.queued + _ARRIVALS_SLACK:
            self._compact_arrivals(org)
        lane_key = (task.role, task.agent_id)
        lane = org.lanes.get(lane_key)
        if lane is None:
            lane = org.lanes[lane_key] = Lane(org, lane_key)
            self._lanes += 1
        lane.push(item)
        if self._head(lane) is item:
            lane.parked = False  # a new head deserves its own placement attempt
            self._list(lane)

    def remove(self, task_id: TaskId) -> QueuedTask | None:
        """Take a task out of the queue (it was cancelled); ``None`` if it is not queued."""
        item = self._index.get(task_id)
        if item is None:
            return None
        self._forget(item[1])
        self._dead.add(item[0])
        self._maybe_compact()
        return item[1]

    def get(self, task_id: TaskId) -> QueuedTask | None:
        item = self._index.get(task_id)
        return None if item is None else item[1]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[QueuedTask]:
        """The queued tasks, in no particular order."""
        return (item[1] for item in list(self._index.values()))

    def why_waiting(self, task_id: TaskId) -> str | None:
        """Why ``task_id`` waits: the reason its lane's placement gave when it last had to
        wait (kept until the lane's next task is taken, though the lane may be unparked to be
        tried again), else ``None``."""
        item = self._index.get(task_id)
        if item is None:
            return None
        task = item[1]
        lane = self._orgs[task.org].lanes.get((task.role, task.agent_id))
        return (lane.reason or None) if lane is not None else None

    def expire(self, now: float) -> list[QueuedTask]:
        """Remove and return the tasks whose deadline is at or before ``now``."""
        out, self._expired = self._expired, []
        deadlines, index = self._deadlines, self._index
        while deadlines and deadlines[0][0] <= now:
            task = heappop(deadlines)[2]
            item = index.get(task.id)
            if item is not None and item[1] is task:
                self._forget(task)
                self._dead.add(item[0])
                out.append(task)
        self._maybe_compact()
        return out

    def peek(self) -> QueuedTask | None:
        """The task :meth:`pop_next` would offer first, its deadline and placement aside."""
        top = self._top
        while top:
            entry = top[0]
            lane = entry[5]
            if entry[4] != lane.version:
                heappop(top)
                continue
            head = self._head(lane)
            org = lane.org
            if head is None or (head[0], org.share, org.vtime) != (entry[3], entry[1], entry[2]):
                heappop(top)
                self._list(lane)
                continue
            return head[1]
        return None

    def pop_next(self, now: float, placer: Placer) -> Decision | None:
        """Take the best task that can be placed now.

        Offers lane heads in order to ``placer``. A ``WAIT`` parks that lane (its tasks stay
        queued) and the next lane is offered; anything else dequeues the task, counts it as
        running for its org (call :meth:`on_finished` when it stops, or :meth:`put_back` if
        it does not start) and returns it. A head
        whose deadline is at or before ``now`` is not offered: it is set aside for
        :meth:`expire`. ``placer`` must not change the scheduler.

        Returns:
            The task and its placement, or ``None`` when nothing queued can be placed now.
        """
        if len(self._top) > 2 * self._lanes + _SLACK:
            self._compact_top()
        top, dead = self._top, self._dead
        while top:
            entry = heappop(top)
            lane = entry[5]
            if entry[4] != lane.version:
                continue  # superseded by a fresher entry, or the lane is parked
            head = lane.first()
            if dead and head is not None and head[0] in dead:
                head = self._head(lane)
            if head is None:
                self._drop(lane)
                continue
            org = lane.org
            if head[0] != entry[3] or org.share != entry[1] or org.vtime != entry[2]:
                self._list(lane)  # the lane got worse since it was listed
                continue
            task = head[1]
            deadline = task.deadline
            if deadline is not None and deadline <= now:
                lane.pop()
                self._forget(task)
                self._expired.append(task)
                self._list(lane)
                continue
            try:
                placement = placer(task)
            except BaseException:
                self._list(lane)  # keep the lane schedulable whatever the placer did
                raise
            if placement.action is _WAIT:
                lane.parked = True
                lane.reason = placement.reason
                lane.version += 1
                continue
            # Take the task and list the lane's next head: the hot path, written out.
            self._last = lane.pop()
            lane.reason = ""
            del self._index[task.id]
            org.queued -= 1
            if not org.queued:
                org.arrivals.clear()  # an org whose queue empties keeps nothing of it
            if task.agent_id is None:
                org.by_role[task.role] -= 1
            if deadline is not None:
                self._with_deadline -= 1
            running = org.running = org.running + 1
            served = org.served = org.served + 1
            share = org.share = (running + 0.5) / org.weight  # OrgState.reweigh(), inlined
            vtime = org.vtime = served / org.weight
            version = lane.version = lane.version + 1
            head = lane.first()
            if dead and head is not None and head[0] in dead:
                head = self._head(lane)
            if head is None:
                self._drop(lane)
            else:
                rank = lane.listed = head[0]
                heappush(top, (rank >> SEQ_BITS, share, vtime, rank, version, lane))
            return tuple.__new__(Decision, (task, placement))
        return None

    # -- internals -------------------------------------------------------------------------

    def _org(self, org: OrgId) -> _Org:
        state = self._orgs.get(org)
        if state is None:
            raise NotFound(
                f"organization {org} is not registered with the scheduler",
                details={"org": org},
            )
        return state

    def _forget(self, task: QueuedTask) -> None:
        """Drop ``task`` from the index and counters; an item left in a lane becomes dead."""
        del self._index[task.id]
        org = self._orgs[task.org]
        org.queued -= 1
        if not org.queued:
            org.arrivals.clear()
        if task.agent_id is None:
            org.by_role[task.role] -= 1
        if task.deadline is not None:
            self._with_deadline -= 1

    def _head(self, lane: _Lane) -> _Item | None:
        dead = self._dead
        while (item := lane.first()) is not None:
            if not dead or item[0] not in dead:
                return item
            lane.pop()
            dead.discard(item[0])
        return None

    def _list(self, lane: _Lane) -> None:
        """Push a fresh top-level entry for ``lane``, superseding any older one."""
        head = self._head(lane)
        lane.version += 1
        if head is None:
            self._drop(lane)
            return
        org = lane.org
        rank = lane.listed = head[0]
        heappush(self._top, (rank >> SEQ_BITS, org.share, org.vtime, rank, lane.version, lane))

    def _relist(self, org: _Org, *, unpark: bool) -> None:
        """Push fresh entries for ``org``'s lanes after its share changed.

        A listed lane is relisted with the rank it was listed with, without touching its
        tasks: if its head has gone since, the entry is better than the truth, which
        pop_next() detects and corrects."""
        top, share, vtime = self._top, org.share, org.vtime
        for lane in list(org.lanes.values()):
            if lane.parked:
                if unpark:
                    lane.parked = False
                    self._list(lane)
                continue
            rank = lane.listed
            lane.version += 1
            heappush(top, (rank >> SEQ_BITS, share, vtime, rank, lane.version, lane))

    def _drop(self, lane: _Lane) -> None:
        lanes = lane.org.lanes
        if not lane and lanes.get(lane.key) is lane:
            del lanes[lane.key]
            lane.version += 1
            self._lanes -= 1

    def _live_items(self, org: _Org) -> list[_Item]:
        dead = self._dead
        live: list[_Item] = []
        for lane in org.lanes.values():
            for item in lane:
                if item[0] in dead:
                    dead.discard(item[0])
                else:
                    live.append(item)
        return live

    def _rekey(self, org: _Org) -> None:
        index, dead = self._index, self._dead
        for lane in org.lanes.values():
            fresh: list[_Item] = []
            for item in lane:
                task = item[1]
                if item[0] in dead:
                    dead.discard(item[0])
                    continue
                band = org.bands[task.priority]
                key = key_of(task.priority, band, task.enqueued_at, self._aging)
                new = (rank_of(key, task.deadline, seq_of(item[0])), task)
                index[task.id] = new
                fresh.append(new)
            lane.rebuild(fresh)

    def _maybe_compact(self) -> None:
        dead = self._dead
        if len(dead) > len(self._index) + _SLACK:
            for org in self._orgs.values():
                for lane in list(org.lanes.values()):
                    lane.rebuild([item for item in lane if item[0] not in dead])
                    if not lane:
                        self._drop(lane)
            dead.clear()
        if len(self._deadlines) > 2 * self._with_deadline + _SLACK:
            self._deadlines = [entry for entry in self._deadlines if self._queued_now(entry[2])]
            heapify(self._deadlines)

    def _queued_now(self, task: QueuedTask) -> bool:
        """Whether ``task`` (as a heap entry holds it) is still the one queued under its id."""
        item = self._index.get(task.id)
        return item is not None and item[1] is task

    def _compact_arrivals(self, org: _Org) -> None:
        """Keep one entry per task still queued (a task handed out and put back has two)."""
        kept: dict[TaskId, tuple[float, int, QueuedTask]] = {}
        for entry in org.arrivals:
            if self._queued_now(entry[2]):
                kept.setdefault(entry[2].id, entry)
        org.arrivals = list(kept.values())
        heapify(org.arrivals)

    def _compact_top(self) -> None:
        self._top = []
        for org in self._orgs.values():
            self._relist(org, unpark=False)
