"""Declared roles as the control plane keeps them: in the store, and in memory for the
dispatcher, which asks for a role on every placement and must not wait for the store.

Applying a role stores it (its version is bumped when its spec changes, and the dispatcher
rolls the change out to its agents), grants its agents the secrets it names, has a change of
its model budget audited, and tells the dispatcher that the org's capacity may have changed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from corral.domain.budgets import Budget
from corral.domain.errors import CorralError, NotFound
from corral.domain.grants import SecretGrant
from corral.domain.ids import OrgId
from corral.domain.roles import Role, RoleChange, diff
from corral.domain.tenancy import Organization
from corral.store.roles import RoleRepository
from corral.vault.grants import Grants

__all__ = ["RoleService"]

log = logging.getLogger("corral.roles")


class RoleService:
    def __init__(self, repo: RoleRepository, grants: Grants) -> None:
        self._repo = repo
        self._grants = grants
        self._by_org: dict[str, dict[str, Role]] = {}
        #: told the org id whenever one of its roles changes or goes
        self.on_change: Callable[[str], None] = lambda org_id: None
        #: told (org, role, budget, actor) when a role's model budget is set, changed or dropped
        self.on_budget: Callable[[Organization, str, Budget | None, str], Awaitable[None]] = (
            _no_budget_hook
        )

    async def load(self) -> None:
        """Read every org's roles from the store (on start)."""
        self._by_org = {}
        for org_id, role in await self._repo.find():
            self._by_org.setdefault(org_id, {})[role.name] = role

    # -- what the dispatcher asks ---------------------------------------------------------
    def role(self, org_id: str, name: str | None) -> Role | None:
        """The role ``name`` of the org, as declared now (``None``: not declared)."""
        if name is None:
            return None
        return self._by_org.get(org_id, {}).get(name)

    def roles(self, org_id: str) -> list[Role]:
        return sorted(self._by_org.get(org_id, {}).values(), key=lambda r: r.name)

    def orgs(self) -> list[str]:
        return [org_id for org_id, roles in self._by_org.items() if roles]

    # -- declaring ------------------------------------------------------------------------
    async def apply(
        self, org: Organization, roles: Sequence[Role], *, actor: str, dry_run: bool = False
    ) -> list[RoleChange]:
        """Create or change each of ``roles`` (checked already); what changed, role by role.
        With ``dry_run`` nothing is stored. Idempotent: applying the same roles again
        changes nothing."""
        changes = [diff(self.role(org.id, r.name), r) for r in roles]
        if dry_run:
            return changes
        for role, change in zip(roles, changes, strict=True):
            if change.action == "unchanged":
                continue
            before = self.role(org.id, role.name)
            stored = await self._repo.put(org.id, role)
            self._by_org.setdefault(org.id, {})[role.name] = stored
            await self._grant(org, stored, before, actor=actor)
            if (before.budget if before else None) != stored.budget:
                await self.on_budget(org, role.name, stored.budget, actor)
            log.info("role %s of %s is at version %d", role.name, org.slug, stored.version)
        self.on_change(org.id)
        return changes

    async def get(self, org: Organization, name: str) -> Role:
        """Raises: NotFound: no such role in ``org``."""
        role = self.role(org.id, name)
        if role is None:
            raise NotFound(f"role {name!r} not found", details={"role": name})
        return role

    async def delete(self, org: Organization, name: str, *, actor: str) -> None:
        """Forget the role: no agent is provisioned for it any more; its agents stay until
        terminated, and the grants it made are revoked.

        Raises:
            NotFound: no such role in ``org``.
        """
        before = await self.get(org, name)
        await self._repo.delete(org.id, name)
        self._by_org.get(org.id, {}).pop(name, None)
        await self._revoke(org, name, before.secrets, actor=actor)
        if before.budget is not None:
            await self.on_budget(org, name, None, actor)
        self.on_change(org.id)

    def forget_org(self, org_id: str) -> None:
        self._by_org.pop(org_id, None)

    # -- its grants -----------------------------------------------------------------------
    async def _grant(
        self, org: Organization, role: Role, before: Role | None, *, actor: str
    ) -> None:
        """The role's agents may read the secrets it names, and no longer those it dropped."""
        oid = OrgId(org.id)
        have = {g.grant.pattern for g in await self._grants.list(oid) if g.grant.role == role.name}
        for pattern in role.secrets:
            if pattern not in have:
                await self._grants.add(oid, SecretGrant(pattern, role=role.name), actor=actor)
        dropped = set(before.secrets if before else ()) - set(role.secrets)
        await self._revoke(org, role.name, tuple(dropped), actor=actor)

    async def _revoke(
        self, org: Organization, name: str, patterns: Sequence[str], *, actor: str
    ) -> None:
        oid = OrgId(org.id)
        for record in await self._grants.list(oid):
            if record.grant.role == name and record.grant.pattern in patterns:
                with contextlib.suppress(CorralError):
                    await self._grants.remove(oid, record.id, actor=actor)


async def _no_budget_hook(org: Organization, role: str, budget: Budget | None, actor: str) -> None:
    return None
