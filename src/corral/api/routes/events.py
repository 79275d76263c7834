"""Server-sent events: an org's agent status changes, task transitions and progress (only
that org's); the admin can stream every org at ``/v1/events``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from corral.api.auth import Caller, admin_only, org_scope, platform
from corral.control.hub import CLOSED
from corral.domain.errors import RateLimited
from corral.domain.tenancy import Organization

__all__ = ["router"]

router = APIRouter(prefix="/v1")
_SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a stream of server-sent events (`event: <kind>` / `data: <json>`)",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                }
            }
        },
    }
}


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


KEEPALIVE_SECONDS = 15.0


#: event streams one organization may hold open at once (each costs a queue and a share of
#: every event's fan-out)
MAX_STREAMS_PER_ORG = 16


def _stream(request: Request, org: str | None) -> StreamingResponse:
    hub = platform(request).hub
    if org is not None and hub.streams(org) >= MAX_STREAMS_PER_ORG:
        raise RateLimited(
            f"organization {org!r} already has {MAX_STREAMS_PER_ORG} event streams open; "
            "close one first",
            retry_after=5.0,
            details={"org": org, "limit": MAX_STREAMS_PER_ORG},
        )

    async def body() -> AsyncIterator[bytes]:
        async with hub.subscribe(org) as queue:
            yield b": connected\n\n"
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        event: dict[str, Any] = await queue.get()
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keepalive\n\n"
                    continue
                if event is CLOSED:
                    return
                data = json.dumps(event, separators=(",", ":"), default=str)
                yield f"event: {event['kind']}\ndata: {data}\n\n".encode()

    return EventStream(
        body(),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/orgs/{org}/events", response_class=EventStream, responses=_SSE)
async def org_events(
    request: Request, found: Annotated[Organization, Depends(org_scope)]
) -> StreamingResponse:
    return _stream(request, found.slug)


@router.get("/events", response_class=EventStream, responses=_SSE)
async def all_events(
    request: Request, _: Annotated[Caller, Depends(admin_only)]
) -> StreamingResponse:
    return _stream(request, None)
