"""The slot pool: up to ``slots`` tasks in hand at once, taken in arrival order.

The platform never sends an agent more tasks than the slots it announced, so a task taken off
the inbox always finds a slot; with one slot tasks run one at a time. Each handler runs as a
task of its own, so that a stop the platform asks for (:meth:`Workers.cancel`) cancels that
handler alone; the slot stays taken until the handler has ended. The pool also decides what is
worth reporting: ``accepted`` only for a task still in hand after
:data:`ACCEPT_AFTER` (one that ends sooner reports only its end, which implies it ran), and
``idle`` only once nothing has been in hand for :data:`IDLE_AFTER`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from corral.domain.messages import StatusKind, TaskMessage

__all__ = ["ACCEPT_AFTER", "IDLE_AFTER", "Report", "Run", "Workers"]

#: A task still in hand after this long is reported ``accepted``; one that ends sooner reports
#: only its end, which implies it ran (the platform records both steps then).
ACCEPT_AFTER = 0.005
#: ``idle`` is reported once nothing has been in hand this long.
IDLE_AFTER = 0.05
#: Stops remembered for tasks not in hand (their task message may still be on its way).
REMEMBERED_STOPS = 4096

#: Handles one task to its end (reporting its outcome); never raises.
Run = Callable[[TaskMessage], Awaitable[None]]
#: Publishes a status: (kind, task, progress).
Report = Callable[[StatusKind, str | None, float | None], Awaitable[None]]


class Workers:
    """Runs tasks with ``run``, at most ``slots`` at once, and reports ``accepted`` and
    ``idle`` through ``report`` (never ``idle`` once ``stopping`` is set)."""

    def __init__(self, *, slots: int, run: Run, report: Report, stopping: asyncio.Event) -> None:
        self._slots = slots
        self._run = run
        self._report = report
        self._stopping = stopping
        self._work: asyncio.Queue[TaskMessage] = asyncio.Queue()
        self._workers: set[asyncio.Task[None]] = set()
        self._active = 0  # workers taking tasks: at most ``slots``
        self._running: dict[str, None] = {}  # the tasks being handled, oldest first
        self._accepted: set[str] = set()  # tasks reported ``accepted``
        self._idle_timer: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._handlers: dict[str, asyncio.Task[None]] = {}  # running handlers, by task
        self._stopped: dict[str, None] = {}  # tasks to stop: dropped if they come (in order)
        self._stopping_now: set[str] = set()  # running handlers asked to stop

    @property
    def current(self) -> str | None:
        """The oldest task in hand, if any."""
        return next(iter(self._running), None)

    def take(self, message: TaskMessage) -> None:
        """Queue a task; a worker takes it now if fewer than ``slots`` are at work."""
        self._work.put_nowait(message)
        if self._active < self._slots:
            self._active += 1
            worker = asyncio.create_task(self._drain(), name="corral-tasks")
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    def cancel(self, task_id: str) -> bool:
        """Stop the task ``task_id``: cancel its handler if it runs (True: the handler reports
        its own end), else make sure it never runs (False: nothing runs it)."""
        handler = self._handlers.get(task_id)
        if handler is not None:
            self._stopping_now.add(task_id)
            handler.cancel()
            return True
        self._stopped[task_id] = None
        while len(self._stopped) > REMEMBERED_STOPS:
            del self._stopped[next(iter(self._stopped))]
        return False

    def is_stopping(self, task_id: str) -> bool:
        """Whether the handler of ``task_id`` was asked to stop (its cancel is not a bug)."""
        return task_id in self._stopping_now

    async def accept(self, task_id: str) -> None:
        """Report ``accepted`` for ``task_id`` once, if it is still in hand."""
        if task_id in self._running and task_id not in self._accepted:
            self._accepted.add(task_id)
            await self._report(StatusKind.ACCEPTED, task_id, 0.0)

    async def finish(self, timeout: float) -> None:
        """Let the tasks in hand end, waiting at most ``timeout`` seconds."""
        if self._workers:
            await asyncio.wait(set(self._workers), timeout=timeout)

    async def _drain(self) -> None:
        """A worker: takes tasks until none is waiting. It stops counting as a worker at the
        moment it finds the queue empty, with no await in between, so a task queued just after
        always finds a worker (or a free place for a new one)."""
        counted = True
        try:
            while not self._work.empty():
                message = self._work.get_nowait()
                if message.task_id in self._stopped:
                    del self._stopped[message.task_id]
                    continue  # stopped before it started: reported already
                self._running[message.task_id] = None
                try:
                    await self._run_task(message)
                finally:
                    self._running.pop(message.task_id, None)
            self._active -= 1
            counted = False
            if not self._running and self._work.empty():
                self._idle_soon()
        finally:
            if counted:
                self._active -= 1

    async def _run_task(self, message: TaskMessage) -> None:
        later = asyncio.get_running_loop().call_later(
            ACCEPT_AFTER, self._accept_soon, message.task_id
        )
        handler = asyncio.ensure_future(self._run(message))
        self._handlers[message.task_id] = handler
        try:
            await handler
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not handler.cancelled() or (current is not None and current.cancelling()):
                raise  # the pool itself is being cancelled
        finally:
            later.cancel()
            self._accepted.discard(message.task_id)
            self._handlers.pop(message.task_id, None)
            self._stopping_now.discard(message.task_id)

    def _accept_soon(self, task_id: str) -> None:
        self._in_background(self.accept(task_id))

    def _idle_soon(self) -> None:
        """Report ``idle`` once nothing has been in hand for :data:`IDLE_AFTER`: an agent kept
        busy by a stream of quick tasks goes idle between every two of them, and saying so each
        time would double the events the platform reads."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(IDLE_AFTER, self._idle_now)

    def _idle_now(self) -> None:
        self._idle_timer = None
        if not self._running and self._work.empty() and not self._stopping.is_set():
            self._in_background(self._report(StatusKind.IDLE, None, None))

    def _in_background(self, report: Awaitable[None]) -> None:
        job = asyncio.ensure_future(report)
        self._background.add(job)
        job.add_done_callback(self._background.discard)
