"""Tasks into INBOX streams, many at once: the dispatcher's hot path.

Each org's tasks go over the control plane's link in that org's account (see
:mod:`corral.bus.links`) through that link's pipelined publisher: every message is published
before any acknowledgement is awaited, and all are awaited together (one timeout for the lot).
Tasks for an agent that reads batches travel together in ``{"batch": [...]}`` messages; the
``Nats-Msg-Id`` of a task (or of a batch, from its tasks' ids) makes a redelivery stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Collection
from typing import Any

from corral.bus.accounts import validate_token
from corral.bus.failures import translate, translating
from corral.bus.links import OrgLinks
from corral.domain import messages, subjects, wire
from corral.domain.errors import CorralError, NotFound, Unavailable
from corral.domain.messages import TaskMessage

__all__ = ["deliver_many"]


def _groups(
    items: list[tuple[str, str, TaskMessage]], batching: Collection[str]
) -> list[tuple[str, str, list[int]]]:
    """Positions of ``items`` by the message they travel in: an agent in ``batching`` gets its
    tasks together (in their order), any other agent one message per task."""
    groups: dict[tuple[str, str], list[int]] = {}
    alone: list[tuple[str, str, list[int]]] = []
    for i, (org, agent, _) in enumerate(items):
        if agent in batching:
            groups.setdefault((org, agent), []).append(i)
        else:
            alone.append((org, agent, [i]))
    return [(org, agent, idx) for (org, agent), idx in groups.items()] + alone


def _chunks(encoded: list[tuple[int, bytes]], *, limit: int) -> list[list[tuple[int, bytes]]]:
    """Consecutive runs of at most :data:`~corral.domain.wire.INBOX_BATCH_MAX` messages that
    fit in ``limit`` bytes together (with the batch's own wrapping); a message too big to share
    goes alone."""
    chunks: list[list[tuple[int, bytes]]] = []
    current: list[tuple[int, bytes]] = []
    size = wire.BATCH_OVERHEAD
    for item in encoded:
        extra = len(item[1]) + 1
        if current and (len(current) >= wire.INBOX_BATCH_MAX or size + extra > limit):
            chunks.append(current)
            current, size = [], wire.BATCH_OVERHEAD
        current.append(item)
        size += extra
    if current:
        chunks.append(current)
    return chunks


def _msg_id(agent: str, tasks: list[TaskMessage]) -> str:
    """The id that makes a redelivery of the same message stored once. It names the agent:
    work requeued without an attempt (the bus did not answer) and sent to another agent is a
    new message, which the inbox must not take for a duplicate of the first."""
    if len(tasks) == 1:
        return f"{tasks[0].task_id}.{tasks[0].type.value}.{tasks[0].attempt}.{agent}"
    ids = ";".join(f"{t.task_id}.{t.type.value}.{t.attempt}" for t in tasks)
    return "batch." + hashlib.sha256(f"{agent};{ids}".encode()).hexdigest()[:40]


async def deliver_many(
    links: OrgLinks,
    items: list[tuple[str, str, TaskMessage]],
    *,
    batching: Collection[str],
    timeout: float,
) -> list[int | CorralError]:
    """Each item's INBOX sequence, or the error that kept it out (see PlatformBus)."""
    out: list[int | CorralError] = [0] * len(items)
    pending: list[tuple[list[int], str, asyncio.Future[dict[str, Any]]]] = []
    for org, agent, indexes in _groups(items, batching):
        limits = links.authority.limits(org)
        try:
            if limits is None:
                raise NotFound(f"organization {org!r} has no bus account", details={"org": org})
            subject = subjects.task_inbox(org, validate_token(agent, what="agent"))
            link = await links.get(org)
        except CorralError as exc:
            for i in indexes:
                out[i] = exc
            continue
        encoded = [(i, messages.encode(items[i][2].to_wire())) for i in indexes]
        for chunk in _chunks(encoded, limit=limits.max_payload):
            tasks = [items[i][2] for i, _ in chunk]
            doing = (
                f"delivering task {tasks[0].task_id} to {agent!r} of {org!r}"
                if len(tasks) == 1
                else f"delivering {len(tasks)} tasks to {agent!r} of {org!r}"
            )
            data = wire.join_batch([d for _, d in chunk], cap=wire.INBOX_BATCH_MAX)
            try:
                with translating(doing):
                    future = await link.publisher.publish(
                        subject,
                        data,
                        headers={
                            "Nats-Msg-Id": _msg_id(agent, tasks),
                            "Nats-Expected-Stream": subjects.INBOX_STREAM,
                        },
                    )
            except CorralError as exc:
                for i, _ in chunk:
                    out[i] = exc
                continue
            pending.append(([i for i, _ in chunk], doing, future))
    if pending:
        await asyncio.wait([f for _, _, f in pending], timeout=timeout)
    for indexes, doing, future in pending:
        result: int | CorralError
        if not future.done():
            future.cancel()
            result = Unavailable(f"{doing}: no acknowledgement in time")
        elif future.cancelled():
            result = Unavailable(f"{doing}: cancelled")
        elif (failure := future.exception()) is not None:
            result = translate(failure, doing=doing)
        else:
            result = int(future.result().get("seq", 0))
        for i in indexes:
            out[i] = result
    return out
