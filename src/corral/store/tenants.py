"""Organizations and their API keys."""

from __future__ import annotations

import builtins
import hashlib
import hmac
from datetime import UTC, datetime

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.domain.errors import Conflict, NotFound
from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import get_plan
from corral.domain.tenancy import Organization
from corral.store.db import Database
from corral.store.schema import ApiKeyRow, OrgRow, UsageRow

__all__ = ["ApiKey", "OrgRepository", "hash_secret"]


def hash_secret(secret: str) -> str:
    """Keys are 256-bit random values, so a plain SHA-256 is a sound one-way store."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey:
    """A key's owner: an org id, or None for an admin key."""

    __slots__ = ("key_id", "org_id")

    def __init__(self, key_id: str, org_id: str | None) -> None:
        self.key_id = key_id
        self.org_id = org_id

    @property
    def is_admin(self) -> bool:
        return self.org_id is None


def _org(row: OrgRow) -> Organization:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return Organization(OrgId(row.id), OrgSlug(row.slug), get_plan(row.plan), created)


#: not being deleted
_LIVE = OrgRow.deleting_at.is_(None)
_ORGS: Table = OrgRow.__table__  # type: ignore[assignment]
_USAGE: Table = UsageRow.__table__  # type: ignore[assignment]
_KEYS: Table = ApiKeyRow.__table__  # type: ignore[assignment]
_INSERT_ORG, _INSERT_USAGE, _INSERT_KEY = insert(_ORGS), insert(_USAGE), insert(_KEYS)


def _free_uid(used: set[int], base: int, count: int) -> int | None:
    top = max((u for u in used if base <= u < base + count), default=base - 1)
    if top + 1 < base + count:
        return top + 1
    return next((u for u in range(base, base + count) if u not in used), None)


class OrgRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, org: Organization, *, key_id: str, key_secret: str) -> None:
        """Insert the org, its zeroed usage row and its first API key, atomically.

        Raises:
            Conflict: an org with this name exists.
        """
        try:
            # three plain INSERTs, the same statements each time (compiled once): the ORM's
            # unit of work cost more than the statements
            async with self._db.writing() as s:
                await s.execute(
                    _INSERT_ORG,
                    {
                        "id": org.id,
                        "slug": org.slug,
                        "plan": org.plan.name,
                        "created_at": org.created_at,
                    },
                )
                await s.execute(_INSERT_USAGE, {"org_id": org.id})
                await s.execute(
                    _INSERT_KEY,
                    {
                        "id": key_id,
                        "org_id": org.id,
                        "secret_hash": hash_secret(key_secret),
                        "created_at": org.created_at,
                    },
                )
        except IntegrityError as exc:
            raise Conflict(
                f"organization {org.slug!r} already exists", details={"org": org.slug}
            ) from exc

    async def get(self, slug: str) -> Organization:
        """The org named ``slug``; one being deleted is not found."""
        async with self._db.sessions() as s:
            row = (
                await s.execute(select(OrgRow).where(OrgRow.slug == slug, _LIVE))
            ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"organization {slug!r} not found", details={"org": slug})
        return _org(row)

    async def get_by_id(self, org_id: str) -> Organization:
        """The org ``org_id``, also while it is being deleted (its agents still refer to it)."""
        async with self._db.sessions() as s:
            row = await s.get(OrgRow, org_id)
        if row is None:
            raise NotFound(f"organization {org_id!r} not found")
        return _org(row)

    async def list(
        self, *, after: str | None = None, limit: int | None = None
    ) -> builtins.list[Organization]:
        """Every org but those being deleted, by name; with ``after``/``limit``, one keyset
        page of them (those named after ``after``, at most ``limit``)."""
        query = select(OrgRow).where(_LIVE).order_by(OrgRow.slug)
        if after is not None:
            query = query.where(OrgRow.slug > after)
        if limit is not None:
            query = query.limit(limit)
        async with self._db.sessions() as s:
            return [_org(r) for r in (await s.execute(query)).scalars().all()]

    async def set_plan(self, slug: str, plan: str) -> Organization:
        get_plan(plan)
        async with self._db.writing() as s:
            result = await s.execute(
                update(OrgRow).where(OrgRow.slug == slug, _LIVE).values(plan=plan)
            )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise NotFound(f"organization {slug!r} not found", details={"org": slug})
        return await self.get(slug)

    async def mark_deleting(self, slug: str) -> Organization:
        """Begin deleting ``slug``, durably: from now on it is not found by name nor listed,
        and :meth:`deleting` returns it until :meth:`delete` removes it.

        Raises:
            NotFound: no such org (or its deletion already began).
        """
        org = await self.get(slug)
        async with self._db.writing() as s:
            result = await s.execute(
                update(OrgRow)
                .where(OrgRow.id == org.id, _LIVE)
                .values(deleting_at=datetime.now(UTC))
            )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise NotFound(f"organization {slug!r} not found", details={"org": slug})
        return org

    async def deleting(self) -> builtins.list[Organization]:
        """The orgs whose deletion began and is not finished, oldest first."""
        async with self._db.sessions() as s:
            rows = await s.execute(
                select(OrgRow).where(OrgRow.deleting_at.is_not(None)).order_by(OrgRow.deleting_at)
            )
            return [_org(r) for r in rows.scalars().all()]

    async def delete(self, org_id: str) -> None:
        """Remove the org's row (and, by cascade, everything the store keeps of it)."""
        async with self._db.writing() as s:
            await s.execute(delete(OrgRow).where(OrgRow.id == org_id))

    # -- the local sandbox's ids ----------------------------------------------------------------
    async def sandbox_uid(self, org_id: str, *, base: int, count: int) -> int | None:
        """The org's own uid (and gid) for its local agents, allocated on first ask from
        ``[base, base + count)`` and kept for as long as the org exists (a unique column: no
        two orgs ever hold one at once). After the highest one given, else the lowest free
        one, so an id is reused as late as possible. None when the range is exhausted.

        The first ask of an org is one statement (the org created is given the next uid
        after the highest, computed by the database in the same ``UPDATE``); only once the
        range's top is taken are the free ones looked for.

        Raises:
            NotFound: no such org.
        """
        for _ in range(8):  # a concurrent allocation took the same id: try the next
            try:
                async with self._db.writing() as s:
                    given = await self._give_next_uid(s, org_id, base, count)
                    if given is not None:
                        return given
                    row = (
                        await s.execute(
                            select(OrgRow.id, OrgRow.sandbox_uid).where(OrgRow.id == org_id)
                        )
                    ).first()
                    if row is None:
                        raise NotFound(f"organization {org_id!r} not found")
                    if row.sandbox_uid is not None:
                        return int(row.sandbox_uid)
                    uid = await self._next_uid(s, base, count)
                    if uid is None:
                        return None
                    result = await s.execute(
                        update(OrgRow)
                        .where(OrgRow.id == org_id, OrgRow.sandbox_uid.is_(None))
                        .values(sandbox_uid=uid)
                    )
            except IntegrityError:
                continue
            if result.rowcount:  # type: ignore[attr-defined]
                return uid
        return (await self.sandbox_uids()).get(org_id)

    @staticmethod
    async def _give_next_uid(s: AsyncSession, org_id: str, base: int, count: int) -> int | None:
        """Give the org without a uid the one after the highest in the range, in one
        statement; None if the org has one already, does not exist, or the range's top is
        taken (the caller looks further)."""
        top = (
            select(func.max(OrgRow.sandbox_uid))
            .where(OrgRow.sandbox_uid.between(base, base + count - 1))
            .scalar_subquery()
        )
        after = func.coalesce(top, base - 1) + 1
        result = await s.execute(
            update(OrgRow)
            .where(
                OrgRow.id == org_id,
                OrgRow.sandbox_uid.is_(None),
                after < base + count,
            )
            .values(sandbox_uid=after)
            .returning(OrgRow.sandbox_uid)
        )
        given = result.scalar_one_or_none()
        return None if given is None else int(given)

    @staticmethod
    async def _next_uid(s: AsyncSession, base: int, count: int) -> int | None:
        """After the highest uid given (one indexed look-up); only when the range's top is
        taken, the lowest free one (a scan)."""
        in_range = OrgRow.sandbox_uid.between(base, base + count - 1)
        top = (await s.execute(select(func.max(OrgRow.sandbox_uid)).where(in_range))).scalar()
        if top is None:
            return base
        if top + 1 < base + count:
            return int(top) + 1
        taken = await s.execute(select(OrgRow.sandbox_uid).where(in_range))
        return _free_uid({u for u in taken.scalars() if u is not None}, base, count)

    async def sandbox_uids(self) -> dict[str, int]:
        """org id → its sandbox uid, for the orgs that have one."""
        async with self._db.sessions() as s:
            rows = await s.execute(
                select(OrgRow.id, OrgRow.sandbox_uid).where(OrgRow.sandbox_uid.is_not(None))
            )
        return {org_id: int(uid) for org_id, uid in rows if uid is not None}

    # -- keys ---------------------------------------------------------------------------------
    async def add_key(self, *, key_id: str, key_secret: str, org_id: str | None) -> None:
        async with self._db.writing() as s:
            s.add(
                ApiKeyRow(
                    id=key_id,
                    org_id=org_id,
                    secret_hash=hash_secret(key_secret),
                    created_at=datetime.now(UTC),
                )
            )

    async def has_admin_key(self) -> bool:
        async with self._db.sessions() as s:
            row = (
                await s.execute(select(ApiKeyRow.id).where(ApiKeyRow.org_id.is_(None)).limit(1))
            ).first()
        return row is not None

    async def authenticate(self, key_id: str, key_secret: str) -> ApiKey | None:
        async with self._db.sessions() as s:
            row = await s.get(ApiKeyRow, key_id)
        if row is None or not hmac.compare_digest(row.secret_hash, hash_secret(key_secret)):
            return None
        return ApiKey(row.id, row.org_id)
