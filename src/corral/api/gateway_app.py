"""The model gateway's HTTP face: an OpenAI-compatible API on its own port, for agents.

Agents reach it with ``OPENAI_BASE_URL`` and their own credential in ``OPENAI_API_KEY``, so
the ``openai`` client and everything built on it work unchanged. It sits on every model call's
path, so it is served by aiohttp's server (its HTTP parser is compiled; the pure-Python one
the API's server runs on took nearly a fifth of the control plane's time per call in a profile of
``benchmarks/gateway.py``), with one handler and no routing framework. Errors take OpenAI's
shape, ``{"error": {"message", "type", "code"}}``, with the statuses its client turns into the
matching exceptions: 401 bad credential, 403 not this agent's task, 404 unknown model, 400
bad request, 402 a budget would be exceeded, 429 over a rate (with ``Retry-After``), 502 the
upstream failed.

Every call's answer says how long it spent in the gateway, apart from waiting for the
upstream, as ``Server-Timing: gateway;dur=0.31, upstream;dur=12.5`` (milliseconds; for a
stream, up to its first byte): what the gateway adds to a call, measured where it is added.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

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

__all__ = ["TASK_HEADER", "serving_gateway"]

log = logging.getLogger("corral.gateway")

#: the header ``ctx.llm`` tags each call with; without it the agent's current task is used
TASK_HEADER = "x-corral-task"

_ERRORS: list[tuple[type[CorralError], int, str, str]] = [
    (BudgetExceeded, 402, "insufficient_quota", "budget_exceeded"),
    (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    (Unauthenticated, 401, "authentication_error", "invalid_api_key"),
    (PermissionDenied, 403, "permission_error", "permission_denied"),
    (NotFound, 404, "invalid_request_error", "model_not_found"),
    (InvalidInput, 400, "invalid_request_error", "invalid_request"),
    (Unavailable, 502, "upstream_error", "upstream_unavailable"),
]
_KINDS = {"/chat/completions": "chat", "/embeddings": "embeddings"}
_JSON = "application/json"


def _error(exc: CorralError) -> tuple[int, bytes, dict[str, str]]:
    status, kind, code = 500, "server_error", exc.code
    for cls, s, k, c in _ERRORS:
        if isinstance(exc, cls):
            status, kind, code = s, k, c
            break
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.5)))
    body = {"error": {"message": exc.message, "type": kind, "code": code, "param": None}}
    return status, orjson.dumps(body), headers


def _timing(began: float, upstream: float) -> str:
    """The ``Server-Timing`` header: time in the gateway and waiting for the upstream, in ms."""
    own = (time.perf_counter() - began - upstream) * 1000
    return f"gateway;dur={own:.3f}, upstream;dur={upstream * 1000:.3f}"


def _bytes(status: int, body: bytes, content_type: str = _JSON, **headers: str) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": content_type, **headers})


async def _body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole request body, refused once it is over ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise InvalidInput(f"the request body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise InvalidInput(f"the request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_gateway_app(gateway: ModelGateway, *, max_body: int = 8 * 1024 * 1024) -> web.Server:
    """The low-level aiohttp server over ``gateway`` (one handler for every request)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        began = time.perf_counter()
        path = request.path.rstrip("/")
        if path.startswith("/v1"):
            path = path[3:]
        token = task = None
        auth = request.headers.get("Authorization")
        if auth is not None:
            scheme, _, rest = auth.partition(" ")
            token = rest.strip() if scheme.lower() == "bearer" else None
        tagged = request.headers.get(TASK_HEADER)
        if tagged is not None:
            task = tagged.strip() or None
        try:
            if path == "/healthz" and request.method == "GET":
                return _bytes(200, b'{"status":"ok"}')
            if path == "/models" and request.method == "GET":
                return _bytes(200, await gateway.list_models(token))
            kind = _KINDS.get(path)
            if kind is None:
                raise NotFound(f"no such endpoint: {request.method} {request.path}")
            if request.method != "POST":
                raise InvalidInput(f"use POST for {request.path}")
            answer = await gateway.call(kind, token, await _body(request, max_body), task=task)
        except CorralError as exc:
            status, body, headers = _error(exc)
            return _bytes(status, body, **headers)
        except Exception:
            log.exception("gateway call failed")
            body = orjson.dumps(
                {"error": {"message": "internal error", "type": "server_error", "code": "internal"}}
            )
            return _bytes(500, body)
        timing = _timing(began, answer.upstream_seconds)
        if answer.events is None:
            return _bytes(
                answer.status,
                answer.body,
                answer.content_type or _JSON,
                **{"Server-Timing": timing},
            )
        events = answer.events
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "Server-Timing": timing,
            },
        )
        try:
            await response.prepare(request)
            async for event in events:
                await response.write(event)
            await response.write_eof()
        except CorralError as exc:  # the upstream broke mid-stream: say so in the stream
            _, body, _ = _error(exc)
            with contextlib.suppress(ConnectionError):
                await response.write(b"data: " + body + b"\n\n")
                await response.write_eof()
        except ConnectionError:
            pass  # the agent went away; the stream is settled below all the same
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            if answer.finish is not None:
                await answer.finish()  # a stream never started still settles
        return response

    return web.Server(handle, access_log=None)


@contextlib.asynccontextmanager
async def serving_gateway(
    gateway: ModelGateway, sock: socket.socket, *, max_body: int = 8 * 1024 * 1024
) -> AsyncIterator[None]:
    """Serve the gateway on the bound socket ``sock`` while the block runs."""
    app = create_gateway_app(gateway, max_body=max_body)
    runner = web.ServerRunner(app, handle_signals=False, shutdown_timeout=3)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield
    finally:
        await runner.cleanup()
