"""An organization's declared models and budgets, as org admins manage them and as the
gateway looks them up on every call.

The provider key is referenced by secret name: declaring a model checks that the secret
exists, and the gateway reads the value from the vault (audited as the platform's read) only
to put it on the upstream request. Each declaration, change, removal and budget change is
written with its audit record in one transaction. Lookups are cached in memory and dropped on
every change made through here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from corral.control.gateway.flights import Flights
from corral.domain.budgets import Budget, ModelLimits, limits_for_plan
from corral.domain.errors import InvalidInput, NotFound
from corral.domain.ids import OrgId
from corral.domain.models import (
    ModelEndpoint,
    validate_base_url,
    validate_model_name,
)
from corral.domain.secrets import AuditAction, AuditEntry, validate_secret_name
from corral.domain.tenancy import Organization
from corral.store.gateway_repo import GatewayStore
from corral.vault.service import Vault

__all__ = ["ModelCatalog"]

_KEY_SECONDS = 30.0  # a rotated provider key is picked up within this


class ModelCatalog:
    def __init__(self, store: GatewayStore, vault: Vault) -> None:
        self._store = store
        self._vault = vault
        self._models: dict[tuple[str, str], ModelEndpoint] = {}
        self._keys: dict[tuple[str, str], tuple[str, float]] = {}
        self._key_reads: Flights[tuple[str, str], str] = Flights("gateway-provider-key")
        self._budgets: dict[str, Budget] | None = None
        #: called with an org id and the budget in force when it changed
        self.on_budget: list[Callable[[str, Budget], Awaitable[None]]] = []

    # -- models ---------------------------------------------------------------------------
    async def declare(
        self,
        org: Organization,
        name: str,
        *,
        base_url: str,
        key_secret: str,
        upstream_model: str | None = None,
        price_in: int = 0,
        price_out: int = 0,
        actor: str,
    ) -> tuple[ModelEndpoint, bool]:
        """Declare model ``name`` of ``org``, or replace its declaration. Returns the model
        and whether it is new.

        Raises:
            InvalidInput: a bad name, URL or price.
            NotFound: no secret ``key_secret`` in the org.
        """
        validate_model_name(name)
        url = validate_base_url(base_url)
        validate_secret_name(key_secret)
        upstream = upstream_model if upstream_model is not None else name
        if not upstream or len(upstream) > 253:
            raise InvalidInput("the upstream model name must be 1-253 characters")
        try:
            await self._vault.info(OrgId(org.id), key_secret)
        except NotFound:
            raise NotFound(
                f"no secret {key_secret!r} in organization {org.slug!r}: store the provider "
                "key first (corral secret set)",
                details={"field": "keySecret", "secret": key_secret},
            ) from None
        model = ModelEndpoint(org.id, name, url, key_secret, upstream, price_in, price_out)

        def audit(previous: ModelEndpoint | None) -> AuditEntry:
            what = f"{url} as {upstream}, key from secret {key_secret}, prices {price_in}/{price_out} µ$/Mtok"
            return self._vault.audit.entry(
                OrgId(org.id),
                actor=actor,
                action=AuditAction.MODEL_DECLARE if previous is None else AuditAction.MODEL_CHANGE,
                target=name,
                allowed=True,
                detail=what
                if previous is None
                else f"was {previous.base_url} as {previous.upstream_model}; now {what}",
            )

        stored, created = await self._store.put_model(model, audit=audit)
        self._drop(org.id, name)
        return stored, created

    async def list(self, org: Organization) -> list[ModelEndpoint]:
        return await self._store.list_models(org.id)

    async def get(self, org: Organization, name: str) -> ModelEndpoint:
        """Raises: NotFound: ``org`` declared no model ``name``."""
        return await self.model(org.id, name, slug=org.slug)

    async def remove(self, org: Organization, name: str, *, actor: str) -> None:
        """Raises: NotFound: ``org`` declared no model ``name``."""
        entry = self._vault.audit.entry(
            OrgId(org.id), actor=actor, action=AuditAction.MODEL_REMOVE, target=name, allowed=True
        )
        removed = await self._store.delete_model(org.id, name, audit=entry)
        self._drop(org.id, name)
        if not removed:
            raise NotFound(
                f"no model {name!r} in organization {org.slug!r}", details={"model": name}
            )

    def _drop(self, org_id: str, name: str) -> None:
        self._models.pop((org_id, name), None)
        self._keys = {k: v for k, v in self._keys.items() if k[0] != org_id}

    async def model(self, org_id: str, name: str, *, slug: str | None = None) -> ModelEndpoint:
        """The declared model, from the cache when it can.

        Raises:
            NotFound: the org declared no such model.
        """
        found = self._models.get((org_id, name))
        if found is None:
            found = await self._store.get_model(org_id, name)
            if found is None:
                raise NotFound(
                    f"model {name!r} is not declared in organization {slug or org_id!r}",
                    details={"model": name},
                )
            self._models[(org_id, name)] = found
        return found

    async def provider_key(self, model: ModelEndpoint) -> str:
        """The provider key of ``model``, read from the vault (cached briefly)."""
        hit = self._keys.get((model.org_id, model.key_secret))
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return await self._key_reads.run(
            (model.org_id, model.key_secret), lambda: self._read_key(model)
        )

    async def _read_key(self, model: ModelEndpoint) -> str:
        value = await self._vault.read_for_platform(
            OrgId(model.org_id),
            model.key_secret,
            actor="platform:gateway",
            why=f"provider key of model {model.name}",
        )
        key = value.decode("utf-8", "replace").strip()
        self._keys[(model.org_id, model.key_secret)] = (key, time.monotonic() + _KEY_SECONDS)
        return key

    # -- budgets --------------------------------------------------------------------------
    def limits(self, plan: str) -> ModelLimits:
        return limits_for_plan(plan)

    async def own_budget(self, org_id: str) -> Budget | None:
        """The budget the org (or an operator) set; ``None``: its plan's default."""
        if self._budgets is None:
            self._budgets = await self._store.org_budgets()
        return self._budgets.get(org_id)

    async def period_budget(self, org_id: str, plan: str) -> Budget:
        own = await self.own_budget(org_id)
        return own if own is not None else limits_for_plan(plan).period

    async def set_budget(self, org: Organization, budget: Budget | None, *, actor: str) -> Budget:
        """Set the org's period budget (``None``: back to its plan's); returns the one in force."""
        for value in (budget.tokens, budget.cost) if budget else ():
            if value is not None and value < 0:
                raise InvalidInput("a budget must not be negative")
        shown = "the plan's default" if budget is None else str(budget.to_wire())
        entry = self._vault.audit.entry(
            OrgId(org.id),
            actor=actor,
            action=AuditAction.MODEL_BUDGET,
            target="period-budget",
            allowed=True,
            detail=f"set to {shown}",
        )
        await self._store.set_org_budget(org.id, budget, audit=entry)
        self._budgets = None
        in_force = await self.period_budget(org.id, org.plan.name)
        for hook in self.on_budget:
            await hook(org.id, in_force)
        return in_force
