"""``/v1/orgs/{org}/secrets``, ``/grants`` and ``/audit``: the vault as an org sees it.

Values are write-only: a ``PUT`` takes one, nothing ever returns one. Bodies hold values as
:class:`~pydantic.SecretStr`, so that a repr or a validation error of the body cannot show
them; messages about a bad value name the problem (size, encoding), never the content. Each
change is audited with the caller's key id (or ``admin``) as the actor.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import ConfigDict, Field, SecretStr

from corral.api import answers
from corral.api.auth import Caller, caller, org_scope, platform
from corral.api.schemas import AGENT_ID, Strict, exactly_one_of, strip_nulls
from corral.domain.errors import InvalidInput, NotFound
from corral.domain.grants import SecretGrant
from corral.domain.ids import OrgId
from corral.domain.secrets import MAX_AUDIT_PAGE, GrantRecord
from corral.domain.tenancy import Organization

__all__ = ["grant_to_wire", "router"]

router = APIRouter(prefix="/v1/orgs/{org}")
Org = Annotated[Organization, Depends(org_scope)]
Who = Annotated[Caller, Depends(caller)]


def _secret_schema(schema: dict[str, Any]) -> None:
    strip_nulls(schema)
    schema.update(exactly_one_of("value", "valueBase64"))


def _grant_schema(schema: dict[str, Any]) -> None:
    strip_nulls(schema)
    schema.update(exactly_one_of("role", "agent"))


class SecretPut(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_secret_schema)

    # the vault checks the size in bytes (MAX_SECRET_BYTES, 64 KiB) with its own message
    value: SecretStr | None = Field(
        default=None,
        json_schema_extra={"maxLength": 65536},
        description="the value as UTF-8 text, at most 65536 bytes",
    )
    value_base64: SecretStr | None = Field(
        default=None,
        alias="valueBase64",
        json_schema_extra={
            "maxLength": 87380,
            "pattern": r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        },
        description="the value as standard base64",
    )

    def data(self) -> bytes:
        """The value's bytes.

        Raises:
            InvalidInput: neither or both forms given, ``value`` does not encode as UTF-8,
                or ``valueBase64`` is not base64.
        """
        if (self.value is None) == (self.value_base64 is None):
            raise InvalidInput(
                "give the secret's value as exactly one of 'value' or 'valueBase64'",
                details={"fields": ["value", "valueBase64"]},
            )
        if self.value is not None:
            try:
                return self.value.get_secret_value().encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput(
                    "value is not valid Unicode text (a lone surrogate?); send it as valueBase64",
                    details={"field": "value"},
                ) from None
        assert self.value_base64 is not None
        try:
            return base64.b64decode(self.value_base64.get_secret_value(), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                "valueBase64 is not valid base64", details={"field": "valueBase64"}
            ) from None


class GrantCreate(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_grant_schema)

    secret: str = Field(
        min_length=1,
        max_length=253,
        json_schema_extra={"pattern": r"^([a-z0-9.*?!-]|\[[a-z0-9.*?!-]*\])+$"},
        description="a secret name or a glob over names, e.g. agent-ssh-*",
    )
    role: str | None = Field(
        default=None,
        max_length=63,
        json_schema_extra={"pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
    )
    agent: str | None = Field(default=None, max_length=128, json_schema_extra={"pattern": AGENT_ID})


def grant_to_wire(record: GrantRecord) -> dict[str, Any]:
    """A grant as the API shows it; ``secret`` is the pattern, as in the request."""
    return {
        "id": record.id,
        "secret": record.grant.pattern,
        "role": record.grant.role,
        "agent": record.grant.agent,
        "createdAt": record.created_at.isoformat(),
    }


#: a secret's name, as the vault accepts it: a DNS-1123 subdomain
SecretName = Annotated[
    str,
    Path(
        json_schema_extra={
            "maxLength": 253,
            "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        }
    ),
]


# -- secrets ----------------------------------------------------------------------------------


@router.put(
    "/secrets/{name}",
    response_model=answers.Secret,
    response_model_exclude_unset=True,
    responses={
        200: {"description": "a new version of an existing secret"},
        201: {"description": "the secret's first version"},
    },
)
async def put_secret(
    name: SecretName, body: SecretPut, org: Org, who: Who, request: Request, response: Response
) -> dict[str, Any]:
    """Store a new version of a secret; answers its metadata, never the value."""
    info = await platform(request).vault.put(OrgId(org.id), name, body.data(), actor=who.label)
    response.status_code = 201 if info.version == 1 else 200
    return info.to_wire()


@router.get("/secrets", response_model=answers.SecretList, response_model_exclude_unset=True)
async def list_secrets(org: Org, request: Request) -> dict[str, Any]:
    infos = await platform(request).vault.list(OrgId(org.id))
    return {"secrets": [i.to_wire() for i in infos]}


@router.get("/secrets/{name}", response_model=answers.Secret, response_model_exclude_unset=True)
async def show_secret(name: SecretName, org: Org, request: Request) -> dict[str, Any]:
    """One secret's name, version and times; values are write-only."""
    return (await platform(request).vault.info(OrgId(org.id), name)).to_wire()


@router.delete("/secrets/{name}", status_code=204)
async def delete_secret(name: SecretName, org: Org, who: Who, request: Request) -> Response:
    await platform(request).vault.delete(OrgId(org.id), name, actor=who.label)
    return Response(status_code=204)


# -- grants -----------------------------------------------------------------------------------


@router.post(
    "/grants", status_code=201, response_model=answers.Grant, response_model_exclude_unset=True
)
async def add_grant(body: GrantCreate, org: Org, who: Who, request: Request) -> dict[str, Any]:
    """Let a role or one agent of this org read the secrets ``secret`` names or matches."""
    if (body.role is None) == (body.agent is None):
        raise InvalidInput(
            "a grant names exactly one of 'role' or 'agent'", details={"fields": ["role", "agent"]}
        )
    p = platform(request)
    agent_id = None
    if body.agent is not None:  # by id or name: the grant names the agent's id
        try:
            agent_id = (await p.controller.get_agent(org, body.agent)).id
        except NotFound:
            raise NotFound(
                f"no agent {body.agent!r} in organization {org.slug!r}",
                details={"field": "agent", "agent": body.agent},
            ) from None
    grant = SecretGrant(pattern=body.secret, role=body.role, agent=agent_id)
    record = await p.vault.grants.add(OrgId(org.id), grant, actor=who.label)
    return grant_to_wire(record)


@router.get("/grants", response_model=answers.GrantList, response_model_exclude_unset=True)
async def list_grants(org: Org, request: Request) -> dict[str, Any]:
    records = await platform(request).vault.grants.list(OrgId(org.id))
    return {"grants": [grant_to_wire(r) for r in records]}


@router.delete("/grants/{grant_id}", status_code=204)
async def remove_grant(grant_id: str, org: Org, who: Who, request: Request) -> Response:
    await platform(request).vault.grants.remove(OrgId(org.id), grant_id, actor=who.label)
    return Response(status_code=204)


# -- audit ------------------------------------------------------------------------------------


@router.get("/audit", response_model=answers.AuditPage, response_model_exclude_unset=True)
async def audit(
    org: Org,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 100,
    before: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="page: the last id seen")
    ] = None,
) -> dict[str, Any]:
    """The org's vault audit log, newest first: writes, deletes, grants, reads and denials."""
    records = await platform(request).vault.audit.list(OrgId(org.id), limit=limit, before_id=before)
    return {
        "entries": [r.to_wire() for r in records],
        "next": records[-1].id if len(records) == limit else None,
    }
