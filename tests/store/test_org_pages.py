"""The organizations a page at a time, in name order, on both databases: what the console's
list of organizations asks (never every org at once)."""

from datetime import UTC, datetime

from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import STANDARD
from corral.domain.tenancy import Organization
from corral.store.db import Database
from corral.store.tenants import OrgRepository


async def test_orgs_come_a_page_at_a_time_after_a_name(db: Database) -> None:
    repo = OrgRepository(db)
    for slug in ("delta", "alpha", "charlie", "bravo"):
        org = Organization(OrgId(f"org_{slug}"), OrgSlug(slug), STANDARD, datetime.now(UTC))
        await repo.create(org, key_id=f"k{slug}", key_secret="s")
    first = await repo.list(limit=3)
    assert [o.slug for o in first] == ["alpha", "bravo", "charlie"]
    rest = await repo.list(after=first[-1].slug, limit=3)
    assert [o.slug for o in rest] == ["delta"]
    assert await repo.list(after="delta", limit=3) == []
    assert [o.slug for o in await repo.list()] == ["alpha", "bravo", "charlie", "delta"]
