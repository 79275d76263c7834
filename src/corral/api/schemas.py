"""HTTP request bodies and response renderers. Tables are not API schemas; neither are
domain objects — they convert here."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from corral.domain.admission import UsageSnapshot
from corral.domain.plans import QUOTA_RESOURCES
from corral.domain.tenancy import Organization

__all__ = ["OrgCreate", "OrgPatch", "org_to_wire", "usage_to_wire"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrgCreate(Strict):
    name: str = Field(min_length=1, max_length=100, description="DNS-1123 label, ≤ 59 chars")
    plan: str = Field(default="standard", max_length=32)


class OrgPatch(Strict):
    plan: str = Field(max_length=32)


def org_to_wire(org: Organization) -> dict[str, Any]:
    return {
        "id": org.id,
        "name": org.slug,
        "plan": org.plan.name,
        "namespace": org.namespace,
        "labels": org.labels,
        "annotations": org.annotations,
        "createdAt": org.created_at.isoformat(),
    }


def usage_to_wire(org: Organization, usage: UsageSnapshot) -> dict[str, Any]:
    quota = {
        r: {"hard": org.plan.quota[r].render(), "used": usage.used[r].render()}
        for r in QUOTA_RESOURCES
    }
    quota["agents"] = {"hard": str(org.plan.agent_limit), "used": str(usage.agents)}
    quota["gpu"] = {"hard": str(org.plan.gpu_limit), "used": str(usage.gpus)}
    return {"org": org.slug, "plan": org.plan.name, "quota": quota}
