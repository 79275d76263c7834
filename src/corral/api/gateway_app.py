"""The model gateway's HTTP face: an OpenAI-compatible API on its own port, for agents.

Agents reach it with ``OPENAI_BASE_URL`` and their own credential in ``OPENAI_API_KEY``, so
the ``openai`` client and everything built on it work unchanged. It is a bare ASGI app (no
framework routing) because it sits on every model call's path. Errors take OpenAI's shape,
``{"error": {"message", "type", "code"}}``, with the statuses its client turns into the
matching exceptions: 401 bad credential, 403 not this agent's task, 404 unknown model, 400
bad request, 402 a budget would be exceeded, 429 over a rate (with ``Retry-After``), 502 the
upstream failed.

Every call's answer says how long it spent in the gateway, apart from waiting for the
upstream, as ``Server-Timing: gateway;dur=0.31, upstream;dur=12.5`` (milliseconds; for a
stream, up to its first byte): what the gateway adds to a call, measured where it is added.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from corral.control.gateway import ModelGateway
from corral.domain.errors import (
    BudgetExceeded,
    CorralError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)

__all__ = ["TASK_HEADER", "create_gateway_app"]

log = logging.getLogger("corral.gateway")

#: the header ``ctx.llm`` tags each call with; without it the agent's current task is used
TASK_HEADER = "x-corral-task"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ERRORS: list[tuple[type[CorralError], int, str, str]] = [
    (BudgetExceeded, 402, "insufficient_quota", "budget_exceeded"),
    (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    (Unauthenticated, 401, "authentication_error", "invalid_api_key"),
    (PermissionDenied, 403, "permission_error", "permission_denied"),
    (NotFound, 404, "invalid_request_error", "model_not_found"),
    (InvalidInput, 400, "invalid_request_error", "invalid_request"),
    (Unavailable, 502, "upstream_error", "upstream_unavailable"),
]


def _error(exc: CorralError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    status, kind, code = 500, "server_error", exc.code
    for cls, s, k, c in _ERRORS:
        if isinstance(exc, cls):
            status, kind, code = s, k, c
            break
    headers = []
    if isinstance(exc, RateLimited):
        headers.append((b"retry-after", str(max(1, round(exc.retry_after + 0.5))).encode()))
    body = {"error": {"message": exc.message, "type": kind, "code": code, "param": None}}
    return status, orjson.dumps(body), headers


def _timing(began: float, upstream: float) -> list[tuple[bytes, bytes]]:
    """The ``Server-Timing`` header: time in the gateway and waiting for the upstream, in ms."""
    own = (time.perf_counter() - began - upstream) * 1000
    return [
        (b"server-timing", f"gateway;dur={own:.3f}, upstream;dur={upstream * 1000:.3f}".encode())
    ]


def create_gateway_app(gateway: ModelGateway, *, max_body: int = 8 * 1024 * 1024) -> Any:
    """The ASGI app over ``gateway``."""

    async def respond(
        send: Send,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [(b"content-type", content_type.encode()), *(extra or [])]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def read_body(receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidInput("the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_body:
                raise InvalidInput(f"the request body is over {max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        if scope["type"] != "http":
            return
        began = time.perf_counter()
        path: str = scope["path"].rstrip("/")
        if path.startswith("/v1"):
            path = path[3:]
        method: str = scope["method"]
        token = task = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, rest = value.decode("latin-1").partition(" ")
                token = rest.strip() if scheme.lower() == "bearer" else None
            elif name == TASK_HEADER.encode():
                task = value.decode("latin-1").strip() or None
        try:
            if path == "/healthz" and method == "GET":
                await respond(send, 200, b'{"status":"ok"}')
                return
            if path == "/models" and method == "GET":
                await respond(send, 200, await gateway.list_models(token))
                return
            kind = {"/chat/completions": "chat", "/embeddings": "embeddings"}.get(path)
            if kind is None:
                raise NotFound(f"no such endpoint: {method} {scope['path']}")
            if method != "POST":
                raise InvalidInput(f"use POST for {scope['path']}")
            answer = await gateway.call(kind, token, await read_body(receive), task=task)
        except CorralError as exc:
            status, body, headers = _error(exc)
            await respond(send, status, body, extra=headers)
            return
        except Exception:
            log.exception("gateway call failed")
            body = orjson.dumps(
                {"error": {"message": "internal error", "type": "server_error", "code": "internal"}}
            )
            await respond(send, 500, body)
            return
        timing = _timing(began, answer.upstream_seconds)
        if answer.events is None:
            await respond(send, answer.status, answer.body, answer.content_type, timing)
            return
        events = answer.events
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                        *timing,
                    ],
                }
            )
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except CorralError as exc:  # the upstream broke mid-stream: say so in the stream
            _, body, _ = _error(exc)
            await send({"type": "http.response.body", "body": b"data: " + body + b"\n\n"})
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            if answer.finish is not None:
                await answer.finish()  # a stream never started still settles

    return app
