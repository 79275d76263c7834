"""The wire messages between the platform and agents (JSON, camelCase keys as in the seed).

Domain values convert at the edge with ``from_wire()`` / ``to_wire()``; ``from_wire`` rejects
malformed input with :class:`InvalidInput` rather than passing half-read data inward.
See docs/protocol.md for the full protocol an agent in any language follows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from corral.domain.documents import check_raw_depth
from corral.domain.errors import InvalidInput

__all__ = [
    "ControlKind",
    "ControlMessage",
    "MessageType",
    "StatusKind",
    "StatusMessage",
    "TaskMessage",
    "decode",
    "encode",
    "traceparent",
]


class MessageType(StrEnum):
    DELEGATE = "delegate"  # platform → agent: do this task; agent → platform: please delegate
    COMPLETE = "complete"  # agent → platform: done, payload is the result
    BLOCKED = "blocked"  # agent → platform: cannot finish, payload["reason"] says why
    FAILED = "failed"  # agent → platform: the handler raised; payload["error"] says what
    CANCEL = "cancel"  # platform → agent: stop handling taskId (cancelled, timed out, expired)
    CANCELLED = "cancelled"  # agent → platform: the handler of a stopped task has ended

    @property
    def ends_task(self) -> bool:
        """Whether an agent sends this when the handler of a task has ended."""
        return self in _ENDINGS


_ENDINGS = frozenset(
    {MessageType.COMPLETE, MessageType.BLOCKED, MessageType.FAILED, MessageType.CANCELLED}
)


class StatusKind(StrEnum):
    READY = "ready"  # the agent is up and consuming its inbox
    IDLE = "idle"
    ACCEPTED = "accepted"  # the agent took task currentTask off its inbox
    WORKING = "working"  # progress report for currentTask
    HEARTBEAT = "heartbeat"
    CHECKPOINTED = "checkpointed"  # state saved into the workspace after a control request
    STOPPING = "stopping"


class ControlKind(StrEnum):
    CHECKPOINT = "checkpoint"
    STOP = "stop"


def encode(obj: dict[str, Any]) -> bytes:
    """Compact JSON. orjson where it can (several times faster on the dispatch path); the
    standard library for what orjson refuses (integers beyond 64 bits, say)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


#: 20 digits in a row may be an integer beyond 64 bits, which orjson would read as a float
_LONG_NUMBER = re.compile(rb"\d{20}")


def decode(data: bytes) -> dict[str, Any]:
    check_raw_depth(data, what="message")
    try:
        if _LONG_NUMBER.search(data):
            raise orjson.JSONDecodeError("long number", "", 0)  # exact integers: the stdlib
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidInput(f"message is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidInput("message must be a JSON object")
    return obj


def _str(obj: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"field {key!r} must be a non-empty string", details={"field": key})
    return value


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """The seed's TaskMessage."""

    task_id: str
    from_agent: str
    to_agent: str
    type: MessageType
    payload: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    #: the W3C trace context (``traceparent``) of the span that sent it, when tracing is on
    traceparent: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out = {
            "taskId": self.task_id,
            "fromAgent": self.from_agent,
            "toAgent": self.to_agent,
            "type": self.type.value,
            "payload": self.payload,
            "attempt": self.attempt,
        }
        if self.traceparent is not None:
            out["traceparent"] = self.traceparent
        return out

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> TaskMessage:
        try:
            kind = MessageType(str(obj.get("type")))
        except ValueError:
            raise InvalidInput(
                f"field 'type' must be one of {[t.value for t in MessageType]}",
                details={"field": "type"},
            ) from None
        payload = obj.get("payload", {})
        if not isinstance(payload, dict):
            raise InvalidInput("field 'payload' must be an object", details={"field": "payload"})
        attempt = obj.get("attempt", 1)
        if not isinstance(attempt, int) or attempt < 1:
            raise InvalidInput("field 'attempt' must be a positive integer")
        return cls(
            task_id=str(_str(obj, "taskId")),
            from_agent=str(_str(obj, "fromAgent")),
            to_agent=str(_str(obj, "toAgent")),
            type=kind,
            payload=payload,
            attempt=attempt,
            traceparent=traceparent(obj.get("traceparent")),
        )


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def traceparent(value: object) -> str | None:
    """``value`` if it is a W3C ``traceparent`` (version-traceid-spanid-flags, lowercase
    hex), else None: a malformed trace context is dropped, never a reason to refuse a task."""
    if isinstance(value, str) and len(value) == 55 and _TRACEPARENT.match(value):
        return value
    return None


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """The seed's status report, plus which agent sent it."""

    agent_id: str
    status: StatusKind
    current_task: str | None = None
    progress: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "agentId": self.agent_id,
            "status": self.status.value,
            "currentTask": self.current_task,
            "progress": self.progress,
            "detail": self.detail,
        }

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> StatusMessage:
        try:
            kind = StatusKind(str(obj.get("status")))
        except ValueError:
            raise InvalidInput(
                f"field 'status' must be one of {[s.value for s in StatusKind]}"
            ) from None
        progress = obj.get("progress")
        if progress is not None and (
            not isinstance(progress, int | float) or not 0.0 <= float(progress) <= 1.0
        ):
            raise InvalidInput("field 'progress' must be a number between 0 and 1")
        detail = obj.get("detail") or {}
        if not isinstance(detail, dict):
            raise InvalidInput("field 'detail' must be an object")
        return cls(
            agent_id=str(_str(obj, "agentId")),
            status=kind,
            current_task=_str(obj, "currentTask", optional=True),
            progress=None if progress is None else float(progress),
            detail=detail,
        )


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """Platform → agent: checkpoint (and reply when saved) or stop."""

    kind: ControlKind
    deadline_seconds: float = 5.0

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "deadlineSeconds": self.deadline_seconds}

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> ControlMessage:
        try:
            kind = ControlKind(str(obj.get("kind")))
        except ValueError:
            raise InvalidInput("field 'kind' must be 'checkpoint' or 'stop'") from None
        deadline = obj.get("deadlineSeconds", 5.0)
        if not isinstance(deadline, int | float) or deadline <= 0:
            raise InvalidInput("field 'deadlineSeconds' must be a positive number")
        return cls(kind, float(deadline))
