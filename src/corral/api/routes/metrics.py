"""``/metrics`` (admin only): Prometheus text across every tenant."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import Field

from corral.api.auth import Caller, admin_only, platform

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request,
    _: Annotated[Caller, Depends(admin_only)],
    orgs: Annotated[Literal["active", "all"], Query()] = "active",
    names: Annotated[
        list[Annotated[str, Field(max_length=200)]] | None,
        Query(alias="name[]", max_length=100),
    ] = None,
) -> Response:
    """Per-org series for the active orgs only (queued work, agents or quota in use), so a
    scrape costs what runs, not how many orgs exist; ``?orgs=all`` for every org's.
    ``?name[]=corral_tasks`` (repeatable, as Prometheus' own exposition takes it) answers
    with those series only, and measures only what they need."""
    text = await platform(request).metrics_text(every_org=orgs == "all", names=names)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
