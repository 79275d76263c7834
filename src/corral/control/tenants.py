"""Onboarding and offboarding organizations across every layer the plan compiles into."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from corral.control.keys import new_key
from corral.domain.admission import UsageSnapshot
from corral.domain.ids import OrgId
from corral.domain.plans import get_plan
from corral.domain.tenancy import Organization, validate_slug
from corral.store.quota import QuotaLedger
from corral.store.tenants import ApiKey, OrgRepository

__all__ = ["CreatedOrg", "OrgHooks", "TenantService"]


@dataclass(frozen=True, slots=True)
class CreatedOrg:
    org: Organization
    api_key: str  # shown once


@dataclass
class OrgHooks:
    """What other layers do when an org comes or goes (bus account, runtime boundary...).

    ``on_create`` hooks run in order; if one fails, the ``on_delete`` of those that ran are
    undone in reverse and the org is removed again, so nothing is left half-created.
    """

    on_create: list[tuple[str, Callable[[Organization], Awaitable[None]]]]
    on_delete: list[tuple[str, Callable[[Organization], Awaitable[None]]]]


class TenantService:
    def __init__(self, orgs: OrgRepository, ledger: QuotaLedger, hooks: OrgHooks) -> None:
        self.orgs = orgs
        self.ledger = ledger
        self.hooks = hooks

    async def create(self, name: str, plan_name: str) -> CreatedOrg:
        slug = validate_slug(name)
        plan = get_plan(plan_name)
        org = Organization(
            OrgId(f"org_{secrets.token_hex(5)}"),
            slug,
            plan,
            datetime.now(UTC).replace(microsecond=0),
        )
        key_id, secret, key = new_key()
        await self.orgs.create(org, key_id=key_id, key_secret=secret)
        done: list[str] = []
        try:
            for name_, hook in self.hooks.on_create:
                await hook(org)
                done.append(name_)
        except BaseException:
            for name_, undo in reversed(self.hooks.on_delete):
                if name_ in done:
                    with contextlib.suppress(Exception):  # the original error wins
                        await undo(org)
            await self.orgs.delete(org.slug)
            raise
        return CreatedOrg(org, key)

    async def get(self, slug: str) -> Organization:
        return await self.orgs.get(slug)

    async def get_by_id(self, org_id: str) -> Organization:
        """Raises: NotFound: no organization has this id."""
        return await self.orgs.get_by_id(org_id)

    async def authenticate(self, key_id: str, key_secret: str) -> ApiKey | None:
        """The API key ``key_id`` if ``key_secret`` is its secret; None otherwise."""
        return await self.orgs.authenticate(key_id, key_secret)

    async def list(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[Organization]:
        """Organizations by name; with ``after``/``limit`` one page of them."""
        return await self.orgs.list(after=after, limit=limit)

    async def set_plan(self, slug: str, plan_name: str) -> Organization:
        get_plan(plan_name)
        org = await self.orgs.set_plan(slug, plan_name)
        for _, hook in self.hooks.on_create:  # re-apply limits everywhere (idempotent)
            await hook(org)
        return org

    async def delete(self, slug: str) -> None:
        org = await self.orgs.get(slug)
        for _, hook in reversed(self.hooks.on_delete):
            await hook(org)
        await self.orgs.delete(slug)

    async def usage(self, slug: str) -> tuple[Organization, UsageSnapshot]:
        org = await self.orgs.get(slug)
        return org, await self.ledger.usage(org.id)
