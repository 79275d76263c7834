"""The control plane's logs: one JSON object a line for machines, a readable line for people.

Which one: JSON when stderr is not a terminal (a service manager, a container, a file), text
on a terminal; ``CORRAL_LOG_FORMAT=json|text`` decides otherwise. Every record carries the
ids of what it is about where they are known: ``org``, ``agent`` and ``task``, bound for a
stretch of work with :func:`bound` (the API binds the org of each request) or given to one
call with ``extra={"org": ..., "agent": ..., "task": ...}``. Adapters below this layer use
``extra``; both end up as the same fields.

A record logged while an OpenTelemetry span is current (an API request that submits a task,
a task's dispatch) also carries ``trace_id`` and ``span_id`` (hex, as trace back ends show
them), so a log line can be joined with its trace; a record may bring its own (the access
log brings the trace of the request it logs, whose span has ended by then).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, Literal

from opentelemetry import trace

__all__ = [
    "CONTEXT_FIELDS",
    "TRACE_FIELDS",
    "JsonFormatter",
    "TextFormatter",
    "bound",
    "configure",
    "log_format",
    "trace_ids",
]

#: the ids a record may carry, in the order they are printed
CONTEXT_FIELDS = ("org", "agent", "task")
#: the ids of the trace a record was logged in
TRACE_FIELDS = ("trace_id", "span_id")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"corral_log_{name}", default=None) for name in CONTEXT_FIELDS
}
#: attributes of every LogRecord: anything else on a record came from ``extra``
#: (and uvicorn's ``color_message``, the message again with terminal colours)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


@contextlib.contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """Records logged inside the block (in this task or thread) carry these ids."""
    unknown = set(ids) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"log context takes {', '.join(CONTEXT_FIELDS)}, not {sorted(unknown)}")
    tokens = [(_context[k], _context[k].set(v)) for k, v in ids.items() if v is not None]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ids bound around the record and its ``extra`` fields, by name."""
    out: dict[str, Any] = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None) or _context[name].get()
        if value is not None:
            out[name] = value
    for key, value in vars(record).items():
        if key not in _STANDARD and key not in out and not key.startswith("_"):
            out[key] = value
    if "trace_id" not in out:
        out |= trace_ids()
    return out


def trace_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the span current now (none: no span, or one that
    records nothing)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``msg``, the ids, ``extra``
    fields and ``exc`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc |= _fields(record)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message  org=... agent=... task=...`` and the traceback below."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        head, sep, rest = line.partition("\n")  # ids on the first line, before a traceback
        ids = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{head}  {ids}{sep}{rest}"


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def log_format(given: str | None = None) -> Literal["json", "text"]:
    """``given`` (or ``CORRAL_LOG_FORMAT``) if set, else json unless stderr is a terminal.

    Raises:
        ValueError: a format other than json or text.
    """
    value = (given or os.environ.get("CORRAL_LOG_FORMAT") or "").strip().lower()
    if value in ("json", "text"):
        return "json" if value == "json" else "text"
    if value:
        raise ValueError(f"CORRAL_LOG_FORMAT must be json or text, not {value!r}")
    return "text" if sys.stderr.isatty() else "json"


def configure(level: str = "INFO", fmt: str | None = None) -> None:
    """Send every logger's records to stderr in the chosen format, at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format(fmt) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    if root.level > logging.DEBUG:  # alembic narrates each plugin and migration at INFO
        logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
