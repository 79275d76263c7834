"""The Agent runtime loop: inbox, status, delegation, checkpoints, secrets, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from corral.domain import subjects
from corral.domain.errors import (
    CorralError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from corral.domain.messages import (
    ControlKind,
    ControlMessage,
    MessageType,
    StatusKind,
    StatusMessage,
    TaskMessage,
    decode,
    encode,
)

__all__ = ["Agent", "AgentConfig", "Blocked", "TaskContext"]

log = logging.getLogger("corral.sdk")

Handler = Callable[["TaskContext"], Awaitable[dict[str, Any] | None]]
CHECKPOINT_FILE = ".corral-checkpoint.json"
#: A task still in hand after this long is reported ``accepted``; one that ends sooner reports
#: only its end, which implies it ran (the platform records both steps then).
ACCEPT_AFTER = 0.005
#: ``idle`` is reported once nothing has been in hand this long.
IDLE_AFTER = 0.05
#: The most task messages one events message carries (the platform takes up to 1,000).
MAX_EVENTS_BATCH = 256


class Blocked(Exception):  # noqa: N818 - reads as the outcome it is
    """Raise from a handler to end the task as ``blocked`` with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AgentConfig:
    org: str
    agent_id: str
    role: str
    nats_url: str
    creds_file: Path
    workspace: Path
    heartbeat_seconds: float = 5.0
    slots: int = 1  # tasks handled at once; announced to the platform when ready

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> AgentConfig:
        e = dict(os.environ if env is None else env)
        missing = [
            k
            for k in ("CORRAL_ORG", "CORRAL_AGENT_ID", "CORRAL_NATS_URL", "CORRAL_CREDS_FILE")
            if not e.get(k)
        ]
        if missing:
            raise InvalidInput(f"agent environment is missing {', '.join(missing)}")
        return cls(
            org=e["CORRAL_ORG"],
            agent_id=e["CORRAL_AGENT_ID"],
            role=e.get("CORRAL_ROLE", "general"),
            nats_url=e["CORRAL_NATS_URL"],
            creds_file=Path(e["CORRAL_CREDS_FILE"]),
            workspace=Path(e.get("CORRAL_WORKSPACE") or Path.cwd()),
            heartbeat_seconds=float(e.get("CORRAL_HEARTBEAT_SECONDS", "5")),
            slots=_slots(e.get("CORRAL_AGENT_SLOTS", "1")),
        )


def _slots(text: str) -> int:
    try:
        slots = int(text)
    except ValueError:
        raise InvalidInput(f"CORRAL_AGENT_SLOTS must be a whole number, got {text!r}") from None
    if not 1 <= slots <= 1024:
        raise InvalidInput(f"CORRAL_AGENT_SLOTS must be between 1 and 1024, got {slots}")
    return slots


def _inbox_messages(obj: dict[str, Any]) -> list[TaskMessage]:
    """The task messages of one inbox message: itself, or its ``batch`` in order."""
    batch = obj.get("batch")
    if batch is None:
        return [TaskMessage.from_wire(obj)]
    if not isinstance(batch, list) or not batch or not all(isinstance(m, dict) for m in batch):
        raise InvalidInput("'batch' must list task messages")
    return [TaskMessage.from_wire(m) for m in batch]


class TaskContext:
    """One task being handled: its payload, progress reports and delegation."""

    def __init__(self, agent: Agent, message: TaskMessage) -> None:
        self._agent = agent
        self.message = message
        self.task_id = message.task_id
        self.payload = message.payload
        self.attempt = message.attempt

    @property
    def workspace(self) -> Path:
        return self._agent.config.workspace

    async def progress(self, fraction: float, **detail: Any) -> None:
        """Report progress (0..1) on this task, as the seed's ``working`` status."""
        await self._agent._accept(self.task_id)
        await self._agent._status(
            StatusKind.WORKING, self.task_id, max(0.0, min(1.0, fraction)), detail
        )

    async def delegate(
        self,
        payload: dict[str, Any],
        *,
        role: str | None = None,
        agent: str | None = None,
        priority: str = "normal",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Ask the platform to run a child task on another agent or role of this org, and
        wait (asynchronously) for its result.

        Raises:
            Blocked: the child task ended blocked or failed (its reason is carried).
            asyncio.TimeoutError: no result within ``timeout``.
        """
        return await self._agent.delegate(
            self.task_id, payload, role=role, agent=agent, priority=priority, timeout=timeout
        )

    async def secret(self, name: str) -> bytes:
        return await self._agent.secret(name)


class Agent:
    """An agent process. Register one handler with :meth:`task`, then :meth:`run`.

    ``slots`` (default: ``CORRAL_AGENT_SLOTS`` of the environment, else 1) is how many tasks
    the handler may run at once; the platform never sends more. With one slot tasks run one at
    a time in arrival order.
    """

    def __init__(self, config: AgentConfig, *, slots: int | None = None) -> None:
        if slots is not None:
            config = dataclasses.replace(config, slots=_slots(str(slots)))
        self.config = config
        self.state: dict[str, Any] = {}
        self._handler: Handler | None = None
        self._on_checkpoint: Callable[[], dict[str, Any]] | None = None
        self._on_restore: Callable[[dict[str, Any]], None] | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._stopping = asyncio.Event()
        self._pending: dict[str, asyncio.Future[TaskMessage]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._active = 0  # workers taking tasks: at most ``slots``
        self._accepted: set[str] = set()  # tasks reported ``accepted``
        self._idle_timer: asyncio.TimerHandle | None = None
        self._outbox: list[dict[str, Any]] = []  # events not yet published, in order
        self._sending: asyncio.Future[None] | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._running: dict[str, None] = {}  # the tasks being handled, oldest first
        self._work: asyncio.Queue[TaskMessage] = asyncio.Queue()
        self._errors: list[str] = []

    @classmethod
    def from_env(cls, *, slots: int | None = None) -> Agent:
        return cls(AgentConfig.from_env(), slots=slots)

    # -- registration ---------------------------------------------------------------------
    def task(self, fn: Handler) -> Handler:
        """Decorator: the coroutine that handles every task sent to this agent."""
        self._handler = fn
        return fn

    def checkpoint(self, fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        """Decorator: returns the state to persist when the agent is paused."""
        self._on_checkpoint = fn
        return fn

    def restore(self, fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        """Decorator: receives the last checkpoint when the agent starts again."""
        self._on_restore = fn
        return fn

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until stopped by the platform (SIGTERM) — the usual ``main``."""
        asyncio.run(self.serve())

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self._restore()
        await self._connect()
        assert self._nc is not None and self._js is not None
        control = await self._nc.subscribe(
            subjects.agent_control(self.config.org, self.config.agent_id), cb=self._on_control
        )
        inbox = await self._js.pull_subscribe_bind(
            durable=subjects.inbox_consumer(self.config.agent_id),
            stream=subjects.INBOX_STREAM,
        )
        await self._status(StatusKind.READY, detail=self._announce())
        beat = asyncio.create_task(self._heartbeat(), name="corral-heartbeat")
        stopping = asyncio.create_task(self._stopping.wait(), name="corral-stopping")
        try:
            while not self._stopping.is_set():
                fetch = asyncio.ensure_future(inbox.fetch(64, timeout=5.0))
                await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():  # asked to stop: do not wait out the long poll
                    fetch.cancel()
                    with contextlib.suppress(BaseException):
                        await fetch
                    break
                try:
                    msgs = fetch.result()
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    break
                for msg in msgs:
                    await self._on_inbox(msg)
        finally:
            stopping.cancel()
            # Let the heartbeat finish rather than cancel it mid-flush: nats-py leaves a
            # cancelled flush's PONG waiter queued, and the next flush then never completes.
            self._stopping.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(beat, timeout=2.0)
            if self._workers:  # let the tasks in hand end, briefly
                await asyncio.wait(set(self._workers), timeout=2.0)
            if self._sending is not None and not self._sending.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._sending), timeout=1.0)
            self._save_checkpoint()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._status(StatusKind.STOPPING), timeout=1.0)
                await control.unsubscribe()
            # close, not drain: draining a pull subscription waits out its whole timeout
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), timeout=1.0)

    def _inbox_prefix(self) -> str:
        return subjects.agent_inbox_prefix(self.config.agent_id)

    async def _connect(self) -> None:
        async def on_error(exc: Exception) -> None:
            text = str(exc)
            self._errors.append(text)
            log.warning("bus error: %s", text)

        async def on_closed() -> None:
            self._stopping.set()

        try:
            self._nc = await nats.connect(
                self.config.nats_url,
                user_credentials=str(self.config.creds_file),
                inbox_prefix=self._inbox_prefix().encode(),
                error_cb=on_error,
                closed_cb=on_closed,
                max_reconnect_attempts=60,
                reconnect_time_wait=0.5,
                name=self.config.agent_id,
            )
        except Exception as exc:
            raise Unavailable(f"agent cannot connect to the bus: {exc}") from exc
        self._js = self._nc.jetstream()

    # -- inbox ----------------------------------------------------------------------------
    async def _on_inbox(self, msg: Msg) -> None:
        try:
            received = _inbox_messages(decode(msg.data))
        except CorralError as exc:
            log.warning("dropping malformed inbox message: %s", exc.message)
            await msg.term()
            return
        await msg.ack()
        for message in received:
            self._take(message)

    def _take(self, message: TaskMessage) -> None:
        if message.type is MessageType.DELEGATE:
            # up to ``slots`` workers take tasks in arrival order; results of delegations
            # (below) never wait for a slot, so a task awaiting its child cannot deadlock
            self._work.put_nowait(message)
            if self._active < self.config.slots:
                self._active += 1
                worker = asyncio.create_task(self._drain(), name="corral-tasks")
                self._workers.add(worker)
                worker.add_done_callback(self._workers.discard)
        else:  # a delegated child's result
            fut = self._pending.pop(message.task_id, None)
            if fut is not None and not fut.done():
                fut.set_result(message)

    async def _drain(self) -> None:
        """A worker: takes tasks until none is waiting. It stops counting as a worker at the
        moment it finds the queue empty, with no await in between, so a task queued just after
        always finds a worker (or a free place for a new one)."""
        counted = True
        try:
            while not self._work.empty():
                message = self._work.get_nowait()
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
            job = asyncio.ensure_future(self._status(StatusKind.IDLE))
            self._background.add(job)
            job.add_done_callback(self._background.discard)

    def _announce(self) -> dict[str, Any]:
        return {"slots": self.config.slots, "batches": True}

    @property
    def _current_id(self) -> str | None:
        return next(iter(self._running), None)

    async def _accept(self, task_id: str) -> None:
        """Report ``accepted`` for ``task_id`` once, if it is still in hand."""
        if task_id in self._running and task_id not in self._accepted:
            self._accepted.add(task_id)
            await self._status(StatusKind.ACCEPTED, task_id, 0.0)

    def _accept_soon(self, task_id: str) -> None:
        job = asyncio.ensure_future(self._accept(task_id))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _run_task(self, message: TaskMessage) -> None:
        later = asyncio.get_running_loop().call_later(
            ACCEPT_AFTER, self._accept_soon, message.task_id
        )
        try:
            await self._handle(message)
        finally:
            later.cancel()
            self._accepted.discard(message.task_id)

    async def _handle(self, message: TaskMessage) -> None:
        ctx = TaskContext(self, message)
        outcome: MessageType = MessageType.COMPLETE
        payload: dict[str, Any]
        try:
            if self._handler is None:
                raise Blocked("this agent has no task handler")
            payload = await self._handler(ctx) or {}
        except Blocked as exc:
            outcome, payload = MessageType.BLOCKED, {"reason": exc.reason}
        except Exception as exc:
            log.exception("task %s failed", message.task_id)
            outcome, payload = MessageType.BLOCKED, {"reason": f"{type(exc).__name__}: {exc}"}
        await self._event(
            TaskMessage(
                message.task_id,
                self.config.agent_id,
                message.from_agent,
                outcome,
                payload,
                message.attempt,
            )
        )

    # -- delegation -----------------------------------------------------------------------
    async def delegate(
        self,
        parent_task: str,
        payload: dict[str, Any],
        *,
        role: str | None = None,
        agent: str | None = None,
        priority: str = "normal",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        if (role is None) == (agent is None):
            raise InvalidInput("delegate to exactly one of role= or agent=")
        child = f"task_{secrets.token_hex(8)}"
        fut: asyncio.Future[TaskMessage] = asyncio.get_running_loop().create_future()
        self._pending[child] = fut
        target = agent if agent is not None else f"role:{role}"
        await self._event(
            TaskMessage(
                child,
                self.config.agent_id,
                target,
                MessageType.DELEGATE,
                {"parent": parent_task, "priority": priority, "payload": payload},
            )
        )
        try:
            reply = await asyncio.wait_for(fut, timeout=timeout)
        finally:
            self._pending.pop(child, None)
        if reply.type is not MessageType.COMPLETE:
            raise Blocked(str(reply.payload.get("reason", "delegated task did not complete")))
        return reply.payload

    # -- secrets --------------------------------------------------------------------------
    async def secret(self, name: str) -> bytes:
        """Read a secret granted to this agent (or its role).

        Raises:
            PermissionDenied: no grant covers it (the denial is audited).
        """
        from corral.sdk.signing import sign_request

        assert self._nc is not None
        body = sign_request(
            creds=self.config.creds_file.read_text(),
            org=self.config.org,
            agent_id=self.config.agent_id,
            secret=name,
        )
        try:
            reply = await self._nc.request(subjects.VAULT_GET, encode(body), timeout=5.0)
        except nats.errors.NoRespondersError as exc:
            raise Unavailable("the vault is not answering") from exc
        except nats.errors.TimeoutError as exc:
            raise Unavailable("the vault did not answer in time") from exc
        data = decode(reply.data)
        if "error" in data:
            error = data["error"] if isinstance(data["error"], dict) else {}
            message = str(error.get("message", "denied"))
            if error.get("code") == "not_found":
                raise NotFound(message)
            if error.get("code") == "unavailable":
                raise Unavailable(message)
            raise PermissionDenied(message)
        value = data.get("value")
        if not isinstance(value, str):
            raise Unavailable("malformed vault reply")
        import base64

        return base64.b64decode(value)

    # -- status, events, control ----------------------------------------------------------
    async def _status(
        self,
        kind: StatusKind,
        task: str | None = None,
        progress: float | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        if self._nc is None or self._nc.is_closed:
            return
        msg = StatusMessage(self.config.agent_id, kind, task, progress, detail or {})
        # no flush per message: the client sends its buffer at once, in order; what an agent
        # that dies loses is recovered by the platform (the agent is lost, its work retried)
        await self._nc.publish(
            subjects.agent_status(self.config.org, self.config.agent_id), encode(msg.to_wire())
        )

    async def _event(self, message: TaskMessage) -> None:
        """Queue ``message`` for the events subject. What is queued in one turn of the event
        loop leaves as one message (``{"batch": [...]}`` when there are several, in order): an
        agent finishing many tasks at once costs the platform one message, not one each."""
        self._outbox.append(message.to_wire())
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._send_events())
        elif len(self._outbox) >= MAX_EVENTS_BATCH:
            await asyncio.shield(self._sending)  # let a long batch leave before adding more

    async def _send_events(self) -> None:
        await asyncio.sleep(0)  # the rest of this turn's events join the batch
        subject = subjects.agent_events(self.config.org, self.config.agent_id)
        backoff = 0.05
        while self._outbox:
            if self._nc is None or self._nc.is_closed:
                return  # gone: the platform sees the agent lost and retries its work
            batch, self._outbox = self._outbox[:MAX_EVENTS_BATCH], self._outbox[MAX_EVENTS_BATCH:]
            try:
                await self._publish_events(subject, batch)
            except Exception as exc:  # e.g. the buffer is full during a long reconnect
                log.warning("could not report %d events (%s); retrying", len(batch), exc)
                self._outbox = batch + self._outbox  # nothing is dropped, order is kept
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05

    async def _publish_events(self, subject: str, batch: list[dict[str, Any]]) -> None:
        assert self._nc is not None
        limit = self._nc.max_payload
        data = encode(batch[0]) if len(batch) == 1 else encode({"batch": batch})
        if len(data) <= limit:
            await self._nc.publish(subject, data)
            return
        for item in batch:  # too big together: one at a time
            one = encode(item)
            if len(one) > limit:  # a result the bus cannot carry: the task ends blocked
                log.error(
                    "the result of %s is %d bytes, over %d", item.get("taskId"), len(one), limit
                )
                one = encode(
                    {
                        **item,
                        "type": MessageType.BLOCKED.value,
                        "payload": {"reason": f"result too large ({len(one)} bytes, max {limit})"},
                    }
                )
            await self._nc.publish(subject, one)

    async def _heartbeat(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.heartbeat_seconds)
                return
            await self._status(StatusKind.HEARTBEAT, self._current_id, detail=self._announce())

    async def _on_control(self, msg: Msg) -> None:
        try:
            control = ControlMessage.from_wire(decode(msg.data))
        except CorralError:
            return
        if control.kind is ControlKind.CHECKPOINT:
            saved = self._save_checkpoint()
            await self._status(StatusKind.CHECKPOINTED, detail={"bytes": saved})
            if msg.reply:
                await msg.respond(encode({"ok": True, "bytes": saved}))
        elif control.kind is ControlKind.STOP:
            if msg.reply:
                await msg.respond(encode({"ok": True}))
            self._stopping.set()

    # -- checkpoints ----------------------------------------------------------------------
    def _checkpoint_path(self) -> Path:
        return self.config.workspace / CHECKPOINT_FILE

    def _save_checkpoint(self) -> int:
        state = self._on_checkpoint() if self._on_checkpoint else self.state
        data = json.dumps(state).encode()
        tmp = self._checkpoint_path().with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self._checkpoint_path())
        return len(data)

    def _restore(self) -> None:
        path = self._checkpoint_path()
        if not path.exists():
            return
        try:
            state = json.loads(path.read_text())
        except ValueError:
            log.warning("ignoring an unreadable checkpoint")
            return
        if isinstance(state, dict):
            self.state = state
            if self._on_restore:
                self._on_restore(state)
