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

__all__ = ["event_stream", "router"]

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


def _last_id(request: Request) -> int | None:
    """The ``Last-Event-ID`` a reconnecting EventSource sends, else ``?after=`` (the id a
    page was rendered at); None: a fresh stream."""
    text = (request.headers.get("last-event-id") or request.query_params.get("after") or "").strip()
    return int(text) if text.isdigit() and len(text) <= 18 else None


def event_stream(request: Request, org: str | None) -> StreamingResponse:
    """The events of ``org`` (None: of every org) as server-sent events, each with its id;
    a stream that reconnects with ``Last-Event-ID`` gets what it missed first (of what the
    hub keeps). The caller decides who may ask."""
    hub = platform(request).hub
    if org is not None and hub.streams(org) >= MAX_STREAMS_PER_ORG:
        raise RateLimited(
            f"organization {org!r} already has {MAX_STREAMS_PER_ORG} event streams open; "
            "close one first",
            retry_after=5.0,
            details={"org": org, "limit": MAX_STREAMS_PER_ORG},
        )
    after = _last_id(request)

    async def body() -> AsyncIterator[bytes]:
        async with hub.subscribe(org, after=after) as queue:
            # a fresh stream starts after the newest event (what came before is in the page)
            yield f"id: {hub.last_id if after is None else after}\n: connected\n\n".encode()
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
                yield f"id: {event['id']}\nevent: {event['kind']}\ndata: {data}\n\n".encode()

    return EventStream(
        body(),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/orgs/{org}/events", response_class=EventStream, responses=_SSE)
async def org_events(
    request: Request, found: Annotated[Organization, Depends(org_scope)]
) -> StreamingResponse:
    return event_stream(request, found.slug)


@router.get("/events", response_class=EventStream, responses=_SSE)
async def all_events(
    request: Request, _: Annotated[Caller, Depends(admin_only)]
) -> StreamingResponse:
    return event_stream(request, None)
