"""The agent process: the serve loop over its inbox, delegation, and the control channel.

:class:`Agent` wires the rooms of this package together: it connects to the bus, reads its
durable inbox (a task message, or a batch of them), hands tasks to the slot pool
(:mod:`~corral.sdk.workers`), routes the results of delegated children back to the tasks
awaiting them, reports through the outbox (:mod:`~corral.sdk.outbox`), answers checkpoint
and stop requests, and on a graceful stop lets its tasks end and saves a checkpoint
(:mod:`~corral.sdk.checkpoints`).

How a handler ends is what the platform hears: its return value ``complete`` (a result larger
than one bus message is put in the org's object store and the message carries a reference; one
over the plan's maximum is refused, and the task ``failed`` with its size and the limit),
:class:`Blocked`
``blocked`` (never retried), any other exception ``failed`` with its type and message (retried
as the task's policy says), and a ``cancel`` from the platform cancels its coroutine, reported
``cancelled`` once it has ended. A payload (or a delegated child's result) that arrives as a
reference is read from the object store before the handler (or the delegating task) sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from corral.domain import objects, subjects, wire
from corral.domain.errors import CorralError, InvalidInput, TooLarge, Unavailable
from corral.domain.ids import new_task_id
from corral.domain.messages import (
    ControlKind,
    ControlMessage,
    MessageType,
    StatusKind,
    TaskMessage,
    decode,
    encode,
)
from corral.sdk import checkpoints, tracing
from corral.sdk import objects as object_io
from corral.sdk.config import AgentConfig, parse_slots
from corral.sdk.context import Blocked, TaskContext
from corral.sdk.outbox import Outbox
from corral.sdk.pulls import Puller
from corral.sdk.vault import read_secret
from corral.sdk.workers import Workers

__all__ = ["RESULT_ENVELOPE", "Agent", "Handler", "failure", "inbox_messages"]

log = logging.getLogger("corral.sdk")

#: the most inbox messages one pull takes (each may carry a batch of tasks)
INBOX_BATCH = 64
#: how long one pull waits for a first message: an idle agent asks once per this many seconds
INBOX_WAIT = 5.0
#: how long the server may take to answer a pull, beyond its wait
INBOX_ANSWER = 5.0

Handler = Callable[[TaskContext], Awaitable[dict[str, Any] | None]]
#: Bytes kept free for the task message around a result.
RESULT_ENVELOPE = 1024


def failure(exc: BaseException) -> dict[str, Any]:
    """The ``failed`` event's payload for a handler that raised ``exc``."""
    kind = type(exc).__name__
    text = exc.message if isinstance(exc, CorralError) else str(exc)
    return {"error": {"type": kind, "message": text[:4000]}, "reason": f"{kind}: {text}"[:4000]}


def inbox_messages(obj: dict[str, Any]) -> list[TaskMessage]:
    """The task messages of one inbox message: itself, or its ``batch`` in order.

    Raises:
        InvalidInput: not a task message, or a batch that is empty, over
            :data:`~corral.domain.wire.INBOX_BATCH_MAX` or holds anything but task messages.
    """
    batch = wire.batch_from_wire(obj, cap=wire.INBOX_BATCH_MAX)
    return [TaskMessage.from_wire(m) for m in batch]


class Agent:
    """An agent process. Register one handler with :meth:`task`, then :meth:`run`.

    ``slots`` (default: ``CORRAL_AGENT_SLOTS`` of the environment, else 1) is how many tasks
    the handler may run at once; the platform never sends more. With one slot tasks run one at
    a time in arrival order.
    """

    def __init__(self, config: AgentConfig, *, slots: int | None = None) -> None:
        if slots is not None:
            config = dataclasses.replace(config, slots=parse_slots(str(slots)))
        self.config = config
        self.state: dict[str, Any] = {}
        self._handler: Handler | None = None
        self._on_checkpoint: Callable[[], dict[str, Any]] | None = None
        self._on_restore: Callable[[dict[str, Any]], None] | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._stopping = asyncio.Event()
        self._pending: dict[str, asyncio.Future[TaskMessage]] = {}  # delegated children
        self._outbox = Outbox(config.org, config.agent_id, max_payload=config.max_payload)
        self._workers = Workers(
            slots=config.slots,
            run=self._handle,
            report=self._outbox.status,
            stopping=self._stopping,
        )
        self._errors: list[str] = []
        self._inbox: Puller | None = None  # the inbox reader, once connected
        self._pacer = object_io.Pacer(config.ingress_bytes)

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
        stop_tracing = tracing.configure_from_env()
        await self._connect()
        assert self._nc is not None and self._js is not None
        control = await self._nc.subscribe(
            subjects.agent_control(self.config.org, self.config.agent_id), cb=self._on_control
        )
        self._inbox = inbox = Puller(
            self._nc,
            stream=subjects.INBOX_STREAM,
            consumer=subjects.inbox_consumer(self.config.agent_id),
            max_bytes=2 * max(self._nc.max_payload, self.config.max_payload),
            timeout=INBOX_ANSWER,
        )
        await inbox.start()
        await self._outbox.status(StatusKind.READY, detail=self._announce())
        beat = asyncio.create_task(self._heartbeat(), name="corral-heartbeat")
        stopping = asyncio.create_task(self._stopping.wait(), name="corral-stopping")
        backoff = 0.1
        try:
            while not self._stopping.is_set():
                fetch = asyncio.ensure_future(inbox.fetch(INBOX_BATCH, wait=INBOX_WAIT))
                await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():  # asked to stop: do not wait out the long poll
                    fetch.cancel()
                    with contextlib.suppress(BaseException):
                        await fetch
                    break
                try:
                    msgs = fetch.result()
                except nats.errors.ConnectionClosedError:
                    break
                except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                    # e.g. a reconnect, or the consumer not there for a moment: ask again
                    log.warning("reading the inbox failed: %s; retrying in %.1fs", exc, backoff)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                for msg in msgs:
                    await self._on_inbox(msg)
        finally:
            stopping.cancel()
            # Let the heartbeat finish rather than cancel it mid-flush: nats-py leaves a
            # cancelled flush's PONG waiter queued, and the next flush then never completes.
            self._stopping.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(beat, timeout=2.0)
            await self._workers.finish(timeout=2.0)  # let the tasks in hand end, briefly
            await self._outbox.settle(timeout=1.0)
            self._save_checkpoint()
            with contextlib.suppress(Exception):
                stop_tracing()  # the spans still held go out before the process ends
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._outbox.status(StatusKind.STOPPING), timeout=1.0)
                await control.unsubscribe()
            # close, not drain: draining a pull subscription waits out its whole timeout
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), timeout=1.0)

    async def _connect(self) -> None:
        async def on_error(exc: Exception) -> None:
            text = str(exc)
            self._errors.append(text)
            log.warning("bus error: %s", text)

        async def on_closed() -> None:
            self._stopping.set()

        async def on_reconnected() -> None:
            # the long poll out may have died with the server (a restarted one, say, after
            # the control plane that ran it was killed): ask the one there now at once
            if self._inbox is not None:
                self._inbox.interrupt()

        try:
            self._nc = await nats.connect(
                self.config.nats_url,
                user_credentials=str(self.config.creds_file),
                inbox_prefix=subjects.agent_inbox_prefix(self.config.agent_id).encode(),
                error_cb=on_error,
                closed_cb=on_closed,
                reconnected_cb=on_reconnected,
                # for as long as it takes: whether an agent should still run is its
                # supervisor's to say (a control plane restarted after a long outage adopts
                # it; one that does not ends it), never the bus's absence
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                name=self.config.agent_id,
            )
        except Exception as exc:
            raise Unavailable(f"agent cannot connect to the bus: {exc}") from exc
        self._js = self._nc.jetstream()
        self._outbox.client = self._nc

    def _announce(self) -> dict[str, Any]:
        return {"slots": self.config.slots, "batches": True}

    # -- inbox ----------------------------------------------------------------------------
    async def _on_inbox(self, msg: Msg) -> None:
        try:
            received = inbox_messages(decode(msg.data))
        except CorralError as exc:
            log.warning("dropping malformed inbox message: %s", exc.message)
            await msg.term()
            return
        await msg.ack()
        for message in received:
            if message.type is MessageType.DELEGATE:
                # results of delegations (below) never wait for a slot, so a task awaiting its
                # child cannot deadlock
                self._workers.take(message)
            elif message.type is MessageType.CANCEL:
                if not self._workers.cancel(message.task_id):  # not running: ended already
                    await self._end(message, MessageType.CANCELLED, {"reason": "stopped"})
            else:  # a delegated child's result
                fut = self._pending.pop(message.task_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(message)

    async def _handle(self, message: TaskMessage) -> None:
        with tracing.handling(
            message.traceparent,
            task=message.task_id,
            agent=self.config.agent_id,
            org=self.config.org,
            attempt=message.attempt,
        ) as span:
            outcome, payload = await self._outcome(message)
            tracing.ended(span, outcome.value)
        await self._end(message, outcome, payload)

    async def _outcome(self, message: TaskMessage) -> tuple[MessageType, dict[str, Any]]:
        ctx = TaskContext(self, message)
        outcome: MessageType = MessageType.COMPLETE
        payload: dict[str, Any]
        try:
            if self._handler is None:
                raise Blocked("this agent has no task handler")
            ctx.payload = await self._resolve(ctx.payload, what=f"the payload of {ctx.task_id}")
            payload = await self._handler(ctx) or {}
            payload = await self._deliverable(message, payload)
        except Blocked as exc:
            outcome, payload = MessageType.BLOCKED, {"reason": exc.reason}
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._workers.is_stopping(message.task_id) or task is None:
                raise  # the agent itself is stopping
            task.uncancel()
            log.info("task %s stopped at the platform's request", message.task_id)
            outcome, payload = MessageType.CANCELLED, {"reason": "stopped"}
        except TooLarge as exc:  # a result over the plan's maximum: retrying cannot help
            log.error("%s", exc.message)
            outcome, payload = MessageType.FAILED, {**failure(exc), "retryable": False}
        except Exception as exc:
            log.exception("task %s failed", message.task_id)
            outcome, payload = MessageType.FAILED, failure(exc)
        return outcome, payload

    async def _end(
        self, message: TaskMessage, outcome: MessageType, payload: dict[str, Any]
    ) -> None:
        await self._outbox.event(
            TaskMessage(
                message.task_id,
                self.config.agent_id,
                message.from_agent,
                outcome,
                payload,
                message.attempt,
            )
        )

    def _inline_limit(self) -> int:
        limit = self.config.max_payload
        if self._nc is not None and self._nc.max_payload:
            limit = min(limit, self._nc.max_payload)
        return objects.inline_limit(limit - RESULT_ENVELOPE)

    async def _deliverable(self, message: TaskMessage, result: dict[str, Any]) -> dict[str, Any]:
        """``result``, or a reference to it once put in the org's object store if the bus
        cannot carry it in one message.

        Raises:
            TooLarge: it is larger than the organization's plan allows.
            QuotaExceeded: the org's object store is full.
            Conflict: something was written under its name already (objects are write-once).
        """
        data = encode(result)
        if len(data) <= self._inline_limit():
            return result
        name = objects.result_name(message.task_id, message.attempt)
        return (await self._put(name, data, what=f"the result of {message.task_id}")).to_wire()

    async def _put(self, name: str, data: bytes, *, what: str) -> objects.ObjectRef:
        if len(data) > self.config.max_object:
            raise objects.too_large(what, len(data), self.config.max_object)
        assert self._js is not None
        log.info("%s is %d bytes: kept in the object store as %s", what, len(data), name)
        chunk = objects.chunk_size(self._inline_limit())
        return await object_io.put(self._js, name, data, chunk=chunk, pacer=self._pacer)

    async def _resolve(self, doc: dict[str, Any], *, what: str) -> dict[str, Any]:
        """``doc``, or the document it refers to in the org's object store."""
        ref = objects.reference_in(doc)
        if ref is None:
            return doc
        assert self._js is not None
        data = await object_io.get(self._js, ref, limit=self.config.max_object)
        try:
            return decode(data)
        except CorralError as exc:
            raise InvalidInput(f"{what} in the object store is not a JSON document") from exc

    # -- what a task context asks (see corral.sdk.context.TaskHost) -----------------------
    async def report_progress(self, task_id: str, fraction: float, detail: dict[str, Any]) -> None:
        """Report progress (clamped to 0..1) on a task in hand, ``accepted`` first if not yet
        said; what :meth:`TaskContext.progress` calls."""
        await self._workers.accept(task_id)
        await self._outbox.status(StatusKind.WORKING, task_id, max(0.0, min(1.0, fraction)), detail)

    async def delegate(
        self,
        parent_task: str,
        payload: dict[str, Any],
        *,
        role: str | None = None,
        agent: str | None = None,
        priority: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        if (role is None) == (agent is None):
            raise InvalidInput("delegate to exactly one of role= or agent=")
        child = new_task_id()
        data = encode(payload)
        if len(data) > self._inline_limit():
            name = objects.payload_name(child)
            payload = (await self._put(name, data, what=f"the payload of {child}")).to_wire()
        fut: asyncio.Future[TaskMessage] = asyncio.get_running_loop().create_future()
        self._pending[child] = fut
        target = agent if agent is not None else f"role:{role}"
        await self._outbox.event(
            TaskMessage(
                child,
                self.config.agent_id,
                target,
                MessageType.DELEGATE,
                {"parent": parent_task, "payload": payload}
                | ({} if priority is None else {"priority": priority}),
                traceparent=tracing.current_traceparent(),
            )
        )
        try:
            reply = await asyncio.wait_for(fut, timeout=timeout)
        finally:
            self._pending.pop(child, None)
        if reply.type is not MessageType.COMPLETE:
            raise Blocked(str(reply.payload.get("reason", "delegated task did not complete")))
        return await self._resolve(reply.payload, what=f"the result of {child}")

    async def secret(self, name: str) -> bytes:
        """Read a secret granted to this agent (or its role).

        Raises:
            PermissionDenied: no grant covers it (the denial is audited).
        """
        assert self._nc is not None
        return await read_secret(self._nc, self.config, name)

    # -- heartbeat and control ------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.heartbeat_seconds)
                return
            await self._outbox.status(
                StatusKind.HEARTBEAT, self._workers.current, detail=self._announce()
            )

    async def _on_control(self, msg: Msg) -> None:
        try:
            control = ControlMessage.from_wire(decode(msg.data))
        except CorralError:
            return
        if control.kind is ControlKind.CHECKPOINT:
            saved = self._save_checkpoint()
            await self._outbox.status(StatusKind.CHECKPOINTED, detail={"bytes": saved})
            if msg.reply:
                await msg.respond(encode({"ok": True, "bytes": saved}))
        elif control.kind is ControlKind.STOP:
            if msg.reply:
                await msg.respond(encode({"ok": True}))
            self._stopping.set()

    def _save_checkpoint(self) -> int:
        state = self._on_checkpoint() if self._on_checkpoint else self.state
        return checkpoints.save(self.config.workspace, state)

    def _restore(self) -> None:
        state = checkpoints.load(self.config.workspace)
        if state is not None:
            self.state = state
            if self._on_restore:
                self._on_restore(state)
