"""``/metrics`` (admin only): Prometheus text across every tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from corral.api.auth import Caller, admin_only, platform

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, _: Annotated[Caller, Depends(admin_only)]) -> Response:
    return Response(await platform(request).metrics_text(), media_type=CONTENT_TYPE_LATEST)
