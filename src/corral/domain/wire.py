"""Envelopes and errors as they travel between the platform, agents and clients.

Every party builds and reads these shapes through this one module, so that the caps and the
fallbacks cannot drift apart between the bus, the SDK and the CLI:

- a *batch*, ``{"batch": [message, ...]}``, stands for its messages in order; one message
  travels as itself. Each direction has its own cap, and a reader refuses a batch over it
  (:data:`INBOX_BATCH_MAX` platform → agent, :data:`EVENTS_BATCH_MAX` agent → platform, the
  latter part of the protocol other agents implement, see docs/protocol.md);
- an *error*, ``{"error": {"code", "message", "details"}}`` (what
  :meth:`~corral.domain.errors.CorralError.to_wire` writes), is read back into the error tree
  by :func:`error_from_wire`.

Pure: no I/O library, no encoding choice beyond joining already encoded JSON objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corral.domain import errors
from corral.domain.errors import CorralError, InvalidInput

__all__ = [
    "BATCH_KEY",
    "BATCH_OVERHEAD",
    "EVENTS_BATCH_MAX",
    "INBOX_BATCH_MAX",
    "MAX_SLOTS",
    "batch_from_wire",
    "batch_to_wire",
    "error_from_wire",
    "is_error",
    "join_batch",
]

#: The most tasks one agent may take at once, whatever it asks for or announces (here, where
#: an agent's SDK reads it without the rest of the domain).
MAX_SLOTS = 1024

BATCH_KEY = "batch"
#: The most task messages one inbox message carries to an agent that reads batches.
INBOX_BATCH_MAX = 64
#: The most task messages one events message may carry from an agent.
EVENTS_BATCH_MAX = 1000
_OPEN = b'{"' + BATCH_KEY.encode() + b'":['
_CLOSE = b"]}"
#: Bytes a batch adds around its comma-separated messages.
BATCH_OVERHEAD = len(_OPEN) + len(_CLOSE)


def _check_size(count: int, *, cap: int) -> None:
    if not 0 < count <= cap:
        raise InvalidInput(
            f"a batch carries 1 to {cap} messages, not {count}",
            details={"count": count, "cap": cap},
        )


def batch_to_wire(items: Sequence[dict[str, Any]], *, cap: int) -> dict[str, Any]:
    """The object that carries ``items``: the one item itself, else a batch of them.

    Raises:
        InvalidInput: no items, or more than ``cap``.
    """
    _check_size(len(items), cap=cap)
    return items[0] if len(items) == 1 else {BATCH_KEY: list(items)}


def join_batch(encoded: Sequence[bytes], *, cap: int) -> bytes:
    """:func:`batch_to_wire` over messages already encoded as JSON objects, without decoding
    them again: the one message itself, else the batch around them (``BATCH_OVERHEAD`` bytes
    plus one comma between every two).

    Raises:
        InvalidInput: no messages, or more than ``cap``.
    """
    _check_size(len(encoded), cap=cap)
    return encoded[0] if len(encoded) == 1 else _OPEN + b",".join(encoded) + _CLOSE


def batch_from_wire(obj: Mapping[str, Any], *, cap: int) -> list[dict[str, Any]]:
    """The messages ``obj`` stands for, in order: those of its batch, else ``obj`` itself.

    Raises:
        InvalidInput: ``batch`` is not a list of 1 to ``cap`` JSON objects.
    """
    batch = obj.get(BATCH_KEY)
    if batch is None:
        return [dict(obj)]
    if not isinstance(batch, list):
        raise InvalidInput(f"'{BATCH_KEY}' must list 1 to {cap} messages")
    _check_size(len(batch), cap=cap)
    if not all(isinstance(item, dict) for item in batch):
        raise InvalidInput(f"each item of '{BATCH_KEY}' must be a JSON object")
    return batch


_BY_CODE: dict[str, type[CorralError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidInput,
        errors.NotFound,
        errors.Conflict,
        errors.QuotaExceeded,
        errors.Unauthenticated,
        errors.PermissionDenied,
        errors.RateLimited,
        errors.Unavailable,
    )
}


def is_error(body: object) -> bool:
    """Whether ``body`` is an error reply rather than an answer."""
    return isinstance(body, Mapping) and "error" in body


def error_from_wire(
    body: object, *, fallback: type[CorralError] = CorralError, message: str = "error"
) -> CorralError:
    """The error of the tree that an ``{"error": {code, message, details}}`` reply stands for.

    Args:
        body: the whole reply; anything malformed in it is read as an unknown error.
        fallback: the class for a missing or unknown ``code``.
        message: the message when the reply carries none.

    Returns:
        The error, to raise (``raise wire.error_from_wire(body)``).
    """
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        error = {}
    text = error.get("message")
    text = text if isinstance(text, str) and text else message
    details = error.get("details")
    details = dict(details) if isinstance(details, Mapping) else {}
    cls = _BY_CODE.get(str(error.get("code", "")), fallback)
    if issubclass(cls, errors.RateLimited):
        retry_after = details.pop("retry_after", 1.0)
        if not isinstance(retry_after, int | float):
            retry_after = 1.0
        return cls(text, retry_after=float(retry_after), details=details)
    return cls(text, details=details)
