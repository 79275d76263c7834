"""HTTP request bodies and response renderers. Tables are not API schemas; neither are
domain objects — they convert here."""

from __future__ import annotations

import functools
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.domain.admission import UsageSnapshot
from corral.domain.plans import PLANS, QUOTA_RESOURCES
from corral.domain.tenancy import Organization

__all__ = [
    "AGENT_ID",
    "DURATION",
    "LABEL30",
    "ORG_NAME",
    "QUANTITY",
    "OrgCreate",
    "OrgPatch",
    "Strict",
    "exactly_one_of",
    "strip_nulls",
    "org_to_wire",
    "usage_to_wire",
]

# What the validators accept, said in the schema so that a client generated from it never
# sends what the server refuses for a reason the schema did not state.
#: a DNS-1123 label of at most 30 characters: agent names and roles
LABEL30 = r"^[a-z0-9]([-a-z0-9]{0,28}[a-z0-9])?$"
#: an organization's name: a DNS-1123 label short enough for ``org-<name>`` (63)
ORG_NAME = r"^[a-z0-9]([-a-z0-9]{0,57}[a-z0-9])?$"
#: an agent's id (or, where accepted, its name)
AGENT_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
#: a resource quantity as Kubernetes writes it (``500m``, ``2``, ``1.5Gi``, ``1e3``)
QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]|[numkMGTPE])?$"
#: a duration from now: ``30s``, ``10m``, ``2h``, ``1d``
DURATION = r"^[0-9]+(\.[0-9]+)?[smhd]$"


def strip_nulls(schema: dict[str, Any]) -> None:
    """An optional field is omitted, never sent as null: say so in the schema."""
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf")
        if options and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del prop["anyOf"]
            if len(rest) == 1:
                prop.update(rest[0])
            else:
                prop["anyOf"] = rest
            if prop.get("default", 0) is None:
                del prop["default"]


def exactly_one_of(*fields: str) -> dict[str, Any]:
    """A JSON-schema fragment: exactly one of ``fields`` is present."""
    return {"oneOf": [{"required": [f]} for f in fields]}


class Strict(BaseModel):
    """A request body: unknown fields are refused, and so is an explicit null (optional fields
    are omitted instead), and so is ``true`` or ``false`` for a number (which pydantic would
    read as 1 or 0), exactly as the schema says."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=strip_nulls)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        values = data.values()
        if None in values:  # the search at C speed
            nulls = sorted(k for k, v in data.items() if v is None)
            if nulls:
                raise ValueError(f"omit {', '.join(nulls)} instead of sending null")
        if True in values or False in values:  # at C speed too (so are 1 and 0: looked at)
            flags = [k for k in _numbers(cls) if type(data.get(k)) is bool]
            if flags:
                raise ValueError(f"{', '.join(sorted(flags))} must be a number, not true or false")
        return data


@functools.cache
def _numbers(model: type[BaseModel]) -> tuple[str, ...]:
    """The names (as sent) of ``model``'s fields that take a number and not a boolean."""
    names: list[str] = []
    for name, f in model.model_fields.items():
        kinds = {_bare(k) for k in typing.get_args(f.annotation)} or {_bare(f.annotation)}
        if kinds & {int, float} and bool not in kinds:
            names.append(f.alias or name)
    return tuple(names)


def _bare(kind: Any) -> Any:
    """``kind`` without its ``Annotated`` metadata."""
    return typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Annotated else kind


def _plans_enum(schema: dict[str, Any]) -> None:
    strip_nulls(schema)
    schema["properties"]["plan"]["enum"] = sorted(PLANS)


class OrgCreate(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_plans_enum)

    name: str = Field(
        min_length=1,
        max_length=59,
        json_schema_extra={"pattern": ORG_NAME},
        description="DNS-1123 label, ≤ 59 chars",
    )
    plan: str = Field(default="standard", max_length=32)


class OrgPatch(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_plans_enum)

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
