"""``/v1/orgs`` and ``/v1/plans``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from corral.api.auth import Caller, admin_only, caller, org_scope, platform
from corral.api.schemas import OrgCreate, OrgPatch, org_to_wire, usage_to_wire
from corral.control.monitoring import org_figures
from corral.domain.plans import PLANS
from corral.domain.tenancy import Organization

__all__ = ["router"]

router = APIRouter(prefix="/v1")


@router.get("/plans")
async def list_plans(_: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
    return {"plans": [p.to_wire() for p in PLANS.values()]}


@router.post("/orgs", status_code=201)
async def create_org(
    body: OrgCreate, request: Request, _: Annotated[Caller, Depends(admin_only)]
) -> dict[str, Any]:
    created = await platform(request).tenants.create(body.name, body.plan)
    return {**org_to_wire(created.org), "apiKey": created.api_key}


@router.get("/orgs")
async def list_orgs(request: Request, who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
    orgs = await platform(request).tenants.list()
    visible = [o for o in orgs if who.is_admin or o.id == who.org_id]
    return {"orgs": [org_to_wire(o) for o in visible]}


@router.get("/orgs/{org}")
async def get_org(
    request: Request, found: Annotated[Organization, Depends(org_scope)]
) -> dict[str, Any]:
    _, usage = await platform(request).tenants.usage(found.slug)
    return {**org_to_wire(found), "usage": usage_to_wire(found, usage)["quota"]}


@router.patch("/orgs/{org}")
async def patch_org(
    org: str, body: OrgPatch, request: Request, _: Annotated[Caller, Depends(admin_only)]
) -> dict[str, Any]:
    updated = await platform(request).tenants.set_plan(org, body.plan)
    request.app.state.limiter.forget(updated.slug)
    return org_to_wire(updated)


@router.delete("/orgs/{org}", status_code=204)
async def delete_org(
    org: str, request: Request, _: Annotated[Caller, Depends(admin_only)]
) -> Response:
    await platform(request).tenants.delete(org)
    request.app.state.limiter.forget(org)
    return Response(status_code=204)


@router.get("/orgs/{org}/usage")
async def get_usage(
    request: Request, found: Annotated[Organization, Depends(org_scope)]
) -> dict[str, Any]:
    p = platform(request)
    _, usage = await p.tenants.usage(found.slug)
    return {
        **usage_to_wire(found, usage),
        **await org_figures(p, found.slug),
        "models": await p.models.usage(found),
    }
