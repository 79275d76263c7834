"""``/v1/orgs`` and ``/v1/plans``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from corral.api import answers
from corral.api.auth import Caller, admin_only, caller, org_scope, platform
from corral.api.schemas import OrgCreate, OrgPatch, org_to_wire, usage_to_wire
from corral.control.monitoring import org_figures
from corral.domain.errors import NotFound
from corral.domain.plans import PLANS
from corral.domain.tenancy import Organization

__all__ = ["router"]

router = APIRouter(prefix="/v1")


@router.get("/plans", response_model=answers.PlanList, response_model_exclude_unset=True)
async def list_plans(_: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
    return {"plans": [p.to_wire() for p in PLANS.values()]}


@router.post(
    "/orgs", status_code=201, response_model=answers.CreatedOrg, response_model_exclude_unset=True
)
async def create_org(
    body: OrgCreate, request: Request, _: Annotated[Caller, Depends(admin_only)]
) -> dict[str, Any]:
    created = await platform(request).tenants.create(body.name, body.plan)
    return {**org_to_wire(created.org), "apiKey": created.api_key}


@router.get("/orgs", response_model=answers.OrgPage, response_model_exclude_unset=True)
async def list_orgs(
    request: Request,
    who: Annotated[Caller, Depends(caller)],
    cursor: Annotated[str | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> dict[str, Any]:
    """A page of orgs by name (an org key sees its own); ``nextCursor`` (null on the last
    page) asks for the next one."""
    p = platform(request)
    if not who.is_admin:
        try:
            own = [await p.orgs.get_by_id(who.org_id)] if who.org_id else []
        except NotFound:
            own = []
        return {"orgs": [org_to_wire(o) for o in own], "nextCursor": None}
    page = await p.tenants.list(after=cursor, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return {
        "orgs": [org_to_wire(o) for o in page],
        "nextCursor": page[-1].slug if more else None,
    }


@router.get("/orgs/{org}", response_model=answers.OrgDetail, response_model_exclude_unset=True)
async def get_org(
    request: Request, found: Annotated[Organization, Depends(org_scope)]
) -> dict[str, Any]:
    _, usage = await platform(request).tenants.usage(found.slug)
    return {**org_to_wire(found), "usage": usage_to_wire(found, usage)["quota"]}


@router.patch("/orgs/{org}", response_model=answers.Org, response_model_exclude_unset=True)
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


@router.get("/orgs/{org}/usage", response_model=answers.Usage, response_model_exclude_unset=True)
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
