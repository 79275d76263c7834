"""Each organization's own uid for its local agents: allocated once, kept while the org
exists, never held by two orgs at once, on both databases."""

import asyncio
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


async def test_an_orgs_uid_is_allocated_once_and_kept(db: Database) -> None:
    repo = OrgRepository(db)
    a, b = await _org(repo, "alpha"), await _org(repo, "beta")
    first = await repo.sandbox_uid(a.id, base=300_000, count=10)
    assert first == 300_000
    assert await repo.sandbox_uid(a.id, base=300_000, count=10) == first  # stable
    assert await repo.sandbox_uid(b.id, base=300_000, count=10) == 300_001
    assert await OrgRepository(db).sandbox_uids() == {a.id: 300_000, b.id: 300_001}  # a restart


async def test_concurrent_allocations_never_share_a_uid(db: Database) -> None:
    repo = OrgRepository(db)
    orgs = [await _org(repo, f"org{i}") for i in range(6)]
    uids = await asyncio.gather(*(repo.sandbox_uid(o.id, base=5000, count=100) for o in orgs))
    assert len(set(uids)) == 6 and all(5000 <= u < 5100 for u in uids if u is not None)


async def test_a_full_range_gives_none_and_a_deleted_orgs_uid_is_reused_last(db: Database) -> None:
    repo = OrgRepository(db)
    a, b, c = [await _org(repo, s) for s in ("alpha", "beta", "gamma")]
    assert await repo.sandbox_uid(a.id, base=7000, count=2) == 7000
    assert await repo.sandbox_uid(b.id, base=7000, count=2) == 7001
    assert await repo.sandbox_uid(c.id, base=7000, count=2) is None  # exhausted
    await repo.delete(a.id)
    assert await repo.sandbox_uid(c.id, base=7000, count=2) == 7000  # free again only now
    with pytest.raises(NotFound):
        await repo.sandbox_uid("org_nobody", base=7000, count=2)
