"""``/v1/orgs/{org}/models``, ``/budget`` and ``/usage/models``: the org's model endpoints for
the gateway, its period budget and its metered model usage.

A model names its provider key by secret name (``keySecret``); the key stays in the vault.
Prices are dollars per million tokens, given as strings (``"0.15"``); costs are
answered as dollar strings, exact to the picodollar. Every change is audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import ConfigDict, Field

from corral.api import answers
from corral.api.auth import Caller, caller, org_scope, platform
from corral.api.schemas import Strict, strip_nulls
from corral.domain.budgets import Budget
from corral.domain.models import parse_dollars, parse_price
from corral.domain.tenancy import Organization

__all__ = ["router"]

router = APIRouter(prefix="/v1/orgs/{org}")
Org = Annotated[Organization, Depends(org_scope)]
Who = Annotated[Caller, Depends(caller)]


MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
BASE_URL = r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[^?#@\s]*)?$"
SECRET = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: dollars per million tokens, to the micro-dollar, at most 1,000,000
PRICE = r"^(1000000(\.0{1,6})?|[0-9]{1,6}(\.[0-9]{1,6})?)$"
#: dollars, to the picodollar, below 1,000,000
DOLLARS = r"^[0-9]{1,6}(\.[0-9]{1,12})?$"
PERIOD = r"^[0-9]{4}-(0[1-9]|1[0-2])$"
MAX_TOKENS = 10**15

ModelName = Annotated[str, Path(json_schema_extra={"maxLength": 128, "pattern": MODEL_NAME})]


class ModelPut(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=strip_nulls, strict=True)

    base_url: str = Field(alias="baseUrl", max_length=2000, json_schema_extra={"pattern": BASE_URL})
    key_secret: str = Field(
        alias="keySecret",
        max_length=253,
        description="the org's secret holding the provider key",
        json_schema_extra={"pattern": SECRET},
    )
    upstream_model: str | None = Field(
        default=None, alias="upstreamModel", min_length=1, max_length=253
    )
    price_in: str = Field(
        default="0",
        alias="priceIn",
        description="$ per million input tokens",
        json_schema_extra={"pattern": PRICE},
    )
    price_out: str = Field(
        default="0",
        alias="priceOut",
        description="$ per million output tokens",
        json_schema_extra={"pattern": PRICE},
    )


class ModelCreate(ModelPut):
    name: str = Field(max_length=128, json_schema_extra={"pattern": MODEL_NAME})


class BudgetPut(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=strip_nulls, strict=True)

    tokens: int | None = Field(
        default=None, ge=0, le=MAX_TOKENS, description="tokens per period; omitted: no limit"
    )
    cost: str | None = Field(
        default=None,
        description="dollars per period; omitted: no limit",
        json_schema_extra={"pattern": DOLLARS},
    )
    plan_default: bool = Field(
        default=False, alias="planDefault", description="drop the org's own budget"
    )


async def _declare(
    request: Request, response: Response, org: Organization, who: Caller, name: str, body: ModelPut
) -> dict[str, Any]:
    model, created = await platform(request).models.catalog.declare(
        org,
        name,
        base_url=body.base_url,
        key_secret=body.key_secret,
        upstream_model=body.upstream_model,
        price_in=parse_price(body.price_in, what="priceIn"),
        price_out=parse_price(body.price_out, what="priceOut"),
        actor=who.label,
    )
    response.status_code = 201 if created else 200
    return model.to_wire()


@router.post(
    "/models",
    status_code=201,
    response_model=answers.ModelEndpoint,
    response_model_exclude_unset=True,
)
async def create_model(
    body: ModelCreate, org: Org, who: Who, request: Request, response: Response
) -> dict[str, Any]:
    """Declare a model (or replace the declaration of one of that name)."""
    return await _declare(request, response, org, who, body.name, body)


@router.put(
    "/models/{name}", response_model=answers.ModelEndpoint, response_model_exclude_unset=True
)
async def put_model(
    name: ModelName, body: ModelPut, org: Org, who: Who, request: Request, response: Response
) -> dict[str, Any]:
    """Declare model ``name``, or replace its declaration."""
    return await _declare(request, response, org, who, name, body)


@router.get("/models", response_model=answers.ModelList, response_model_exclude_unset=True)
async def list_models(org: Org, request: Request) -> dict[str, Any]:
    models = await platform(request).models.catalog.list(org)
    return {"models": [m.to_wire() for m in models]}


@router.get(
    "/models/{name}", response_model=answers.ModelEndpoint, response_model_exclude_unset=True
)
async def show_model(name: ModelName, org: Org, request: Request) -> dict[str, Any]:
    return (await platform(request).models.catalog.get(org, name)).to_wire()


@router.delete("/models/{name}", status_code=204)
async def remove_model(name: ModelName, org: Org, who: Who, request: Request) -> Response:
    await platform(request).models.catalog.remove(org, name, actor=who.label)
    return Response(status_code=204)


@router.get("/budget", response_model=answers.BudgetView, response_model_exclude_unset=True)
async def show_budget(org: Org, request: Request) -> dict[str, Any]:
    """The org's period budget in force and what this period has used of it."""
    usage = await platform(request).models.usage(org)
    return {k: usage[k] for k in ("period", "budget", "ownBudget", "limits", "total")}


@router.put("/budget", response_model=answers.BudgetView, response_model_exclude_unset=True)
async def set_budget(body: BudgetPut, org: Org, who: Who, request: Request) -> dict[str, Any]:
    """Set the org's own period budget (tokens and/or dollars), or go back to its plan's."""
    budget = None
    if not body.plan_default:
        cost = None if body.cost is None else parse_dollars(body.cost, what="cost")
        budget = Budget(body.tokens, cost)
    p = platform(request)
    await p.models.catalog.set_budget(org, budget, actor=who.label)
    usage = await p.models.usage(org)
    return {k: usage[k] for k in ("period", "budget", "ownBudget", "limits", "total")}


@router.get("/usage/models", response_model=answers.ModelUsage, response_model_exclude_unset=True)
async def model_usage(
    org: Org,
    request: Request,
    period: Annotated[
        str | None,
        Query(max_length=7, description="a month, 2026-12", json_schema_extra={"pattern": PERIOD}),
    ] = None,
) -> dict[str, Any]:
    """Model calls, tokens and cost of the period, per role, model and agent."""
    return await platform(request).models.usage(org, period=period)
