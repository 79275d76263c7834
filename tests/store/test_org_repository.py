"""Orgs in the store: a deletion is durable and hides the org from the API's look-ups, and the
org list reads in keyset pages; on both databases."""

from datetime import UTC, datetime

import pytest

from corral.domain.errors import NotFound
from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import STANDARD
from corral.domain.tenancy import Organization
from corral.store.db import Database
from corral.store.tenants import OrgRepository


async def _org(repo: OrgRepository, slug: str) -> Organization:
    org = Organization(OrgId(f"org_{slug}"), OrgSlug(slug), STANDARD, datetime.now(UTC))
    await repo.create(org, key_id=f"k{slug}", key_secret="s")
    return org


async def test_an_org_being_deleted_is_not_found_by_name_but_stays_until_removed(
    db: Database,
) -> None:
    repo = OrgRepository(db)
    a, b = await _org(repo, "alpha"), await _org(repo, "beta")
    assert await repo.mark_deleting("alpha") == a
    with pytest.raises(NotFound):
        await repo.get("alpha")
    with pytest.raises(NotFound):
        await repo.mark_deleting("alpha")  # it began already
    with pytest.raises(NotFound):
        await repo.set_plan("alpha", "free")
    assert [o.slug for o in await repo.list()] == ["beta"]
    assert await OrgRepository(db).deleting() == [a]  # durable: a restart sees it
    assert await repo.get_by_id(a.id) == a  # its agents still refer to it
    await repo.delete(a.id)
    assert await repo.deleting() == []
    with pytest.raises(NotFound):
        await repo.get_by_id(a.id)
    assert await repo.get("beta") == b


async def test_orgs_are_listed_in_pages_after_a_name(db: Database) -> None:
    repo = OrgRepository(db)
    for slug in ("delta", "alpha", "charlie", "bravo", "echo"):
        await _org(repo, slug)
    await repo.mark_deleting("charlie")
    first = await repo.list(limit=2)
    second = await repo.list(after=first[-1].slug, limit=2)
    last = await repo.list(after=second[-1].slug, limit=2)
    assert [[o.slug for o in p] for p in (first, second, last)] == [
        ["alpha", "bravo"],
        ["delta", "echo"],
        [],
    ]
    assert [o.slug for o in await repo.list()] == ["alpha", "bravo", "delta", "echo"]
