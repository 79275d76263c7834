"""Onboarding and offboarding organizations across every layer the plan compiles into.

An org lives in several layers (the store's rows, its bus account and streams, its vault,
its runtime boundary and agents, the scheduler), each an :class:`OrgStep`. Every operation on
an org is all-or-nothing:

- **create** writes the rows, then applies each step in order; if one fails, every step that
  ran (the failing one too: it may have done half its work) is removed again in reverse and the
  rows are deleted, so nothing of the org is left.
- **plan change** applies the new plan to each step and writes it to the store last; if
  anything fails, the old plan is applied again to every step that ran, so the old plan holds
  everywhere.
- **delete** first marks the org *deleting* in the store — the point of no return, before which
  nothing is erased: from then on the API no longer finds it — then lets each layer go in
  reverse order, then removes the rows. A layer that fails leaves the deletion pending: it is
  carried on by :meth:`TenantService.finish_deletions` (which the control plane runs at start
  and every few seconds) until done. Removing is idempotent in every layer.

Every API request looks up its caller's key and its org: both are kept in memory once read
(the leader alone serves the API, and every change of an org goes through this service), so
a request across a thousand orgs costs no store round trip for either. An org is kept only
while no operation on it runs, and forgotten when one ends; a key is forgotten with its org.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from corral.control.keys import new_key
from corral.domain.admission import UsageSnapshot
from corral.domain.errors import CorralError, Unavailable
from corral.domain.ids import OrgId
from corral.domain.plans import get_plan
from corral.domain.tenancy import Organization, validate_slug
from corral.store.quota import QuotaLedger
from corral.store.tenants import ApiKey, OrgRepository, hash_secret

__all__ = ["CreatedOrg", "OrgHooks", "OrgStep", "TenantService"]

log = logging.getLogger(__name__)

StepAction = Callable[[Organization], Awaitable[None]]

#: the most orgs (and keys) kept in memory; past it, the rest are read from the store each time
_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class CreatedOrg:
    org: Organization
    api_key: str  # shown once


@dataclass(frozen=True, slots=True)
class OrgStep:
    """One layer an org lives in.

    ``apply`` brings the layer to the org as given (creates it, or applies its new plan);
    ``remove`` lets it go. Both are idempotent, and ``remove`` succeeds on a layer that is
    absent or half-made (a failed ``apply`` is undone with it).
    """

    name: str
    apply: StepAction
    remove: StepAction


@dataclass
class OrgHooks:
    """The layers of an org, in the order they are created (and removed in reverse)."""

    steps: list[OrgStep] = field(default_factory=list)


class TenantService:
    def __init__(
        self,
        orgs: OrgRepository,
        ledger: QuotaLedger,
        hooks: OrgHooks,
        *,
        on_change: Callable[[Organization, str], None] | None = None,
    ) -> None:
        self.orgs = orgs
        self.ledger = ledger
        self.hooks = hooks
        #: told of each org created, moved to another plan or marked for deletion
        #: (``created``, ``plan``, ``deleted``): the admin's live list of orgs follows it
        self.on_change = on_change
        self._locks: dict[str, asyncio.Lock] = {}
        self._tearing_down: set[str] = set()
        self._known: dict[str, Organization] = {}  # slug → org, as last read
        self._keys: dict[tuple[str, str], ApiKey] = {}  # (key id, secret's hash) → key
        self._changes = 0  # operations begun or ended: a read that spans one is not kept

    def _forget(self, slug: str, org_id: str | None = None) -> None:
        known = self._known.pop(slug, None)
        gone = org_id or (known.id if known is not None else None)
        if gone is not None:
            for entry in [k for k, v in self._keys.items() if v.org_id == gone]:
                del self._keys[entry]

    @asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[None]:
        """One operation at a time on one org (kept only while someone holds or waits)."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._known.pop(key, None)
        self._changes += 1
        try:
            async with lock:
                yield
        finally:
            self._known.pop(key, None)  # read again once nothing changes it
            self._changes += 1
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]

    async def create(self, name: str, plan_name: str) -> CreatedOrg:
        """Create the org in every layer, or in none.

        Raises:
            InvalidInput: a bad name or an unknown plan.
            Conflict: the name is taken, or the bus cannot admit the org's reservation.
        """
        slug = validate_slug(name)
        plan = get_plan(plan_name)
        org = Organization(
            OrgId(f"org_{secrets.token_hex(5)}"),
            slug,
            plan,
            datetime.now(UTC).replace(microsecond=0),
        )
        key_id, secret, key = new_key()
        async with self._lock(slug):
            await self.orgs.create(org, key_id=key_id, key_secret=secret)
            done: list[OrgStep] = []
            try:
                for step in self.hooks.steps:
                    done.append(step)  # before it runs: half its work is undone too
                    await step.apply(org)
            except BaseException:
                for step in reversed(done):
                    await self._quietly(step.name, "undoing", step.remove, org)
                await self._quietly("store", "undoing", lambda o: self.orgs.delete(o.id), org)
                raise
        self._changed(org, "created")
        return CreatedOrg(org, key)

    async def get(self, slug: str) -> Organization:
        """Raises: NotFound: no such org (or it is being deleted)."""
        known = self._known.get(slug)
        if known is not None:
            return known
        changes = self._changes
        org = await self.orgs.get(slug)
        if changes == self._changes and slug not in self._locks and len(self._known) < _KEPT:
            self._known[slug] = org  # nothing changed it while it was read
        return org

    async def get_by_id(self, org_id: str) -> Organization:
        """Raises: NotFound: no organization has this id."""
        return await self.orgs.get_by_id(org_id)

    async def authenticate(self, key_id: str, key_secret: str) -> ApiKey | None:
        """The API key ``key_id`` if ``key_secret`` is its secret; None otherwise."""
        entry = (key_id, hash_secret(key_secret))
        known = self._keys.get(entry)
        if known is not None:
            return known
        changes = self._changes
        found = await self.orgs.authenticate(key_id, key_secret)
        if found is not None and changes == self._changes and len(self._keys) < _KEPT:
            self._keys[entry] = found
        return found

    async def list(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[Organization]:
        """Organizations by name (not those being deleted); with ``after``/``limit`` one page
        of them: at most ``limit`` named after ``after``. The API's and the console's lists
        of orgs page through this."""
        return await self.orgs.list(after=after, limit=limit)

    async def set_plan(self, slug: str, plan_name: str) -> Organization:
        """Move the org to another plan in every layer, or leave the old one everywhere.

        Raises:
            InvalidInput: an unknown plan.
            NotFound: no such org.
            Conflict: the bus cannot admit the new plan's reservation.
        """
        plan = get_plan(plan_name)
        async with self._lock(slug):
            old = await self.orgs.get(slug)
            new = replace(old, plan=plan)
            done: list[OrgStep] = []
            try:
                for step in self.hooks.steps:  # idempotent: a same-plan change re-applies
                    done.append(step)
                    await step.apply(new)
                await self.orgs.set_plan(slug, plan.name)
            except BaseException:
                for step in reversed(done):
                    await self._quietly(step.name, "restoring the old plan in", step.apply, old)
                raise
        self._changed(new, "plan")
        return new

    async def delete(self, slug: str) -> None:
        """Delete the org: marked *deleting* first (it is gone for the API from then on), then
        let go in every layer, then its rows removed.

        Raises:
            NotFound: no such org.
            Unavailable: a layer failed; the deletion is pending and will be carried on.
        """
        async with self._lock(slug):
            org = await self.orgs.get(slug)
            self._tearing_down.add(org.id)  # before the mark: the retries leave it to us
            self._forget(slug, org.id)
            try:
                await self.orgs.mark_deleting(slug)  # the point of no return
            except BaseException:
                self._tearing_down.discard(org.id)
                raise
            self._changed(org, "deleted")
            try:
                await self._tear_down(org)
            except CorralError as exc:
                raise Unavailable(
                    f"organization {slug!r} is being deleted but {exc.message}; "
                    "the deletion will be carried on",
                    details={"org": slug, **exc.details},
                ) from exc
            finally:
                self._tearing_down.discard(org.id)

    def _changed(self, org: Organization, change: str) -> None:
        if self.on_change is not None:
            self.on_change(org, change)

    async def finish_deletions(self) -> int:
        """Carry on every deletion that began and did not finish. Returns how many finished;
        one that fails again is logged and stays pending."""
        finished = 0
        for org in await self.orgs.deleting():
            if org.id in self._tearing_down:
                continue
            self._tearing_down.add(org.id)
            try:
                await self._tear_down(org)
            except CorralError as exc:
                log.warning("deleting organization %s: %s (will retry)", org.slug, exc.message)
            except Exception:
                log.exception("deleting organization %s failed (will retry)", org.slug)
            else:
                finished += 1
            finally:
                self._tearing_down.discard(org.id)
        return finished

    async def _tear_down(self, org: Organization) -> None:
        self._forget(org.slug, org.id)
        for step in reversed(self.hooks.steps):
            try:
                await step.remove(org)
            except CorralError as exc:
                raise Unavailable(
                    f"removing its {step.name} failed: {exc.message}",
                    details={"org": org.slug, "step": step.name},
                ) from exc
        await self.orgs.delete(org.id)
        log.info("organization %s deleted", org.slug)

    async def usage(self, slug: str) -> tuple[Organization, UsageSnapshot]:
        org = await self.orgs.get(slug)
        return org, await self.ledger.usage(org.id)

    @staticmethod
    async def _quietly(what: str, doing: str, action: StepAction, org: Organization) -> None:
        """Run a compensating action; its failure is logged, the original error wins."""
        try:
            await action(org)
        except Exception:
            log.exception("%s the %s of organization %s failed", doing, what, org.slug)
