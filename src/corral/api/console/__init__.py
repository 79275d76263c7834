"""The operator's console at ``/``: server-rendered pages over the platform's services, a
little script for live updates, login by key into an HTTP-only cookie.

What belongs here: pages, their forms and the streams that keep them live. Not here: any
rule about who may see what beyond asking the services with the caller's org (the services
and :mod:`corral.api.auth` decide), and no key in any URL.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from corral.api.console import actions, details, lists, live, session

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
_SCRIPT = resources.files("corral.api").joinpath("templates/console.js")


@router.get("/console.js")
async def script() -> Response:
    return Response(
        _SCRIPT.read_text(encoding="utf-8"),
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


for _module in (session, lists, details, actions, live):
    router.include_router(_module.router)
