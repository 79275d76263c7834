"""The API's access log: one record a request on the ``corral.access`` logger, with the method,
the path (query values that may be secrets masked), the status, the duration and the org.

The org is the one the path names (``/v1/orgs/{org}/...``); it is also bound to the log
context for the request, so whatever the request's handling logs carries it. A request whose
handling traced its work (a task's submission) logs that trace's ``trace_id`` and
``span_id``: the route leaves them with :func:`note_trace`.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.control import logs

__all__ = ["AccessLog", "SECRET_PARAMETERS", "loggable_path", "note_trace"]

log = logging.getLogger("corral.access")

#: query parameters whose values are never logged (substrings of the name, any case)
SECRET_PARAMETERS = ("key", "token", "secret", "password", "auth", "signature", "credential")


def loggable_path(path: str, query: bytes) -> str:
    """``path?query`` with the value of every parameter that may hold a secret masked."""
    if not query:
        return path
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    shown = [(k, "***" if any(s in k.lower() for s in SECRET_PARAMETERS) else v) for k, v in pairs]
    return f"{path}?{urlencode(shown, safe='*,')}"


#: where in the request's state the ids of the trace its handling made are kept
TRACE_STATE = "corral_trace"


def note_trace(scope: Scope) -> None:
    """Log the request of ``scope`` with the trace of the span current now."""
    ids = logs.trace_ids()
    if ids:
        scope.setdefault("state", {})[TRACE_STATE] = ids


def _org(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "v1" and parts[2] == "orgs" and parts[3]:
        return parts[3]
    return None


class AccessLog:
    """ASGI middleware: log each HTTP request once its response has started (a stream is
    logged when it opens, with the status it answered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = str(scope.get("path", ""))
        org = _org(path)
        # a route that traced its work leaves its trace's ids here for the access log line
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500  # what the server answers if the app raises before it responds
        logged = False

        def record(code: int) -> None:
            nonlocal logged
            logged = True
            fields = {
                "method": scope.get("method", ""),
                "path": loggable_path(path, scope.get("query_string", b"")),
                "status": code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                **state.get(TRACE_STATE, {}),
            }
            log.info(
                "%s %s %d %.1fms",
                fields["method"],
                fields["path"],
                code,
                fields["duration_ms"],
                extra=fields,
            )

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                record(status)
            await send(message)

        with logs.bound(org=org):
            try:
                await self.app(scope, receive, sending)
            finally:
                if not logged:
                    record(status)
