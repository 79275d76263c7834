"""What keeps console pages live: the event stream (server-sent events with ids, so a
reconnecting page resumes where it stopped) and an agent's log, both authenticated by the
console's cookie and scoped like everything else (another org's answers 404)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from corral.api.auth import Caller, platform
from corral.api.console.html import HEADERS
from corral.api.console.session import answer, console_org
from corral.api.routes.events import event_stream
from corral.domain.errors import PermissionDenied

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/orgs/{slug}/events")
async def org_events(slug: str, request: Request) -> Response:
    async def stream(who: Caller) -> Response:
        org = await console_org(request, who, slug)
        return event_stream(request, org.slug)

    return await answer(request, stream)


@router.get("/events")
async def all_events(request: Request) -> Response:
    async def stream(who: Caller) -> Response:
        if not who.is_admin:
            raise PermissionDenied("every org's events need the admin key")
        return event_stream(request, None)

    return await answer(request, stream)


@router.get("/orgs/{slug}/agents/{agent_id}/log")
async def agent_log(
    slug: str,
    agent_id: str,
    request: Request,
    tail: Annotated[int, Query(ge=1, le=2000)] = 200,
) -> Response:
    async def read(who: Caller) -> Response:
        org = await console_org(request, who, slug)
        text = await platform(request).controller.agent_logs(org, agent_id, tail=tail)
        return JSONResponse({"agent": agent_id, "log": text}, headers=HEADERS)

    return await answer(request, read)
