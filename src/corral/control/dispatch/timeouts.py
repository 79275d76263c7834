"""Timeouts of running work: a task's deadline, its run timeout and its heartbeat timeout, and
the grace a handler has to end once it was asked to stop.

A task past its deadline while an agent runs it ends ``expired``; one past its run timeout
(dispatch to end) or silent past its heartbeat timeout (no ``ctx.progress``) has failed an
attempt, which its retry policy may retry. In each case its agent is asked to stop the handler
and the slot is held until it has (see :class:`~corral.control.dispatch.book.TaskBook`). A
handler that does not end within the grace is the platform's to stop: its agent is restarted,
as after a lost heartbeat, and the slot is freed then.

It runs from the dispatch loop, at most every :data:`CHECK_EVERY` seconds, over the work in
flight only (bounded by the agents' slots, not by the queue).
"""

from __future__ import annotations

import logging
import time

from corral.control.background import Background
from corral.control.dispatch.book import ACTIVE, TaskBook
from corral.control.lifecycle import Controller
from corral.control.ports import BusPort
from corral.domain.errors import CorralError
from corral.domain.messages import MessageType, TaskMessage
from corral.domain.tasks import TaskState
from corral.store.tasks import TaskRecord

__all__ = ["CHECK_EVERY", "Timeouts"]

log = logging.getLogger("corral.dispatcher")

CHECK_EVERY = 0.2  # seconds between two looks at the work in flight


class Timeouts:
    def __init__(
        self, *, book: TaskBook, bus: BusPort, controller: Controller, background: Background
    ) -> None:
        self._book = book
        self._bus = bus
        self._controller = controller
        self._background = background
        self._last = 0.0

    def check(self, now: float) -> None:
        """Act on every timeout passed at ``now`` (POSIX seconds), unless that was done less
        than :data:`CHECK_EVERY` ago."""
        mono = time.monotonic()
        if mono - self._last < CHECK_EVERY:
            return
        self._last = mono
        book = self._book
        # while the bus does not answer (or lately did not) an agent cannot say it is alive,
        # nor that a handler ended: nobody is judged by its silence
        silenced = self._controller.bus_health.disturbed(within=self._controller.silence_limit)
        for agent_id, held in list(book.inflight.items()):
            for task_id in list(held):
                rec = book.live.get(task_id)
                if rec is not None and rec.agent_id == agent_id and rec.state in ACTIVE:
                    self._check_task(rec, now, silenced=silenced)
        if silenced:
            return
        for task_id, stopping in book.stopping.items():
            if not stopping.overdue and mono > stopping.until:
                stopping.overdue = True
                why = f"the handler of {task_id} did not end {book.stop_grace:g}s after a stop"
                log.warning("%s: %s; stopping the agent", stopping.agent_id, why)
                self._stop_work(stopping.org_id, stopping.agent_id, why)

    def _check_task(self, rec: TaskRecord, now: float, *, silenced: bool) -> None:
        book = self._book
        if rec.deadline is not None and rec.deadline.timestamp() <= now:
            why = "the deadline passed while it ran"
            book.end_attempt(rec, stop=True)
            book.move(
                rec,
                TaskState.EXPIRED,
                detail=why,
                result={"reason": why, "attempts": rec.attempts},
            )
            return
        policy = rec.policy
        started = book.started.get(rec.id, now)
        if policy.run_timeout is not None and now - started > policy.run_timeout:
            book.fail_attempt(
                rec,
                f"ran longer than its run timeout of {policy.run_timeout:g}s",
                error_type="RunTimeout",
                stop=True,
            )
            return
        if policy.heartbeat_timeout is not None and not silenced:
            last = book.beats.get(rec.id, started)
            if now - last > policy.heartbeat_timeout:
                book.fail_attempt(
                    rec,
                    f"no progress reported for {policy.heartbeat_timeout:g}s "
                    "(its heartbeat timeout)",
                    error_type="HeartbeatTimeout",
                    stop=True,
                )

    # -- stopping handlers ----------------------------------------------------------------
    def stop_handler(self, rec: TaskRecord) -> None:
        """Ask ``rec``'s agent to stop its handler (the task was cancelled, expired or timed
        out); a ``cancel`` in its inbox, behind the task itself."""
        if rec.agent_id is None:
            return
        message = TaskMessage(
            rec.id,
            "platform",
            rec.agent_id,
            MessageType.CANCEL,
            {"graceSeconds": self._book.stop_grace},
            rec.attempts,
        )
        self._background.spawn(self._deliver_stop(rec.org, rec.agent_id, message), f"stop-{rec.id}")

    async def _deliver_stop(self, org: str, agent_id: str, message: TaskMessage) -> None:
        try:
            await self._bus.deliver(org, agent_id, message)
        except CorralError as exc:  # its grace runs out, and the agent is stopped then
            log.warning("could not ask %s to stop %s: %s", agent_id, message.task_id, exc.message)

    def _stop_work(self, org_id: str, agent_id: str, why: str) -> None:
        """A handler did not end within its grace: the platform stops its agent."""
        org = self._book.orgs.get(org_id)
        if org is not None:
            self._background.spawn(
                self._controller.restart_hung(org, agent_id, why), f"hung-{agent_id}"
            )
