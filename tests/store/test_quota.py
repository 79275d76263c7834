"""Quota charging on both databases, including the race for the last slot."""

import asyncio
from datetime import UTC, datetime

import pytest

from corral.domain.admission import AdmittedResources, charge_for
from corral.domain.errors import QuotaExceeded
from corral.domain.ids import OrgId, OrgSlug
from corral.domain.plans import STANDARD
from corral.domain.quantities import parse
from corral.domain.tenancy import Organization
from corral.store.db import Database
from corral.store.quota import QuotaLedger
from corral.store.tenants import OrgRepository

SMALL = AdmittedResources(parse("100m"), parse("100m"), parse("64Mi"), parse("64Mi"))


async def _org(db: Database, slug: str = "acme") -> Organization:
    org = Organization(OrgId(f"org_{slug}"), OrgSlug(slug), STANDARD, datetime.now(UTC))
    await OrgRepository(db).create(org, key_id=f"k{slug}", key_secret="s")
    return org


async def test_reserve_and_release_round_trip(db: Database) -> None:
    org = await _org(db)
    ledger = QuotaLedger(db)
    await ledger.reserve(org.id, STANDARD, charge_for(SMALL), agents=1)
    snap = await ledger.usage(org.id)
    assert snap.used["pods"] == parse("1") and snap.used["requests.cpu"] == parse("100m")
    assert snap.agents == 1
    await ledger.release(org.id, charge_for(SMALL), agents=1)
    snap = await ledger.usage(org.id)
    assert snap.used["pods"] == parse("0") and snap.agents == 0


async def test_concurrent_reservations_never_both_take_the_last_slot(db: Database) -> None:
    org = await _org(db)
    ledger = QuotaLedger(db)
    for _ in range(STANDARD.agent_limit - 1):
        await ledger.reserve(org.id, STANDARD, charge_for(SMALL), agents=1)

    async def race() -> bool:
        try:
            await ledger.reserve(org.id, STANDARD, charge_for(SMALL), agents=1)
            return True
        except QuotaExceeded:
            return False

    results = await asyncio.gather(*(race() for _ in range(8)))
    assert sum(results) == 1
    snap = await ledger.usage(org.id)
    assert snap.agents == STANDARD.agent_limit


async def test_many_racers_for_pods_respect_the_hard_limit(db: Database) -> None:
    org = await _org(db)
    ledger = QuotaLedger(db)

    async def racer() -> bool:
        try:
            await ledger.reserve(org.id, STANDARD, charge_for(SMALL, pvc=False))
            return True
        except QuotaExceeded:
            return False

    results = await asyncio.gather(*(racer() for _ in range(40)))
    assert sum(results) == 15
    assert (await ledger.usage(org.id)).used["pods"] == parse("15")


async def test_refusal_names_resource_asked_used_allowed(db: Database) -> None:
    org = await _org(db)
    ledger = QuotaLedger(db)
    big = AdmittedResources(parse("4"), parse("4"), parse("1Gi"), parse("1Gi"))
    await ledger.reserve(org.id, STANDARD, charge_for(big))
    await ledger.reserve(org.id, STANDARD, charge_for(big))
    with pytest.raises(QuotaExceeded) as err:
        await ledger.reserve(org.id, STANDARD, charge_for(big))
    assert err.value.details == {
        "resource": "requests.cpu",
        "asked": "4",
        "used": "8",
        "allowed": "10",
    }


async def test_usage_of_reads_only_the_orgs_asked_for(db: Database) -> None:
    orgs = [await _org(db, f"o{n}") for n in range(3)]
    ledger = QuotaLedger(db)
    await ledger.reserve(orgs[0].id, STANDARD, charge_for(SMALL), agents=1)
    await ledger.reserve(orgs[1].id, STANDARD, charge_for(SMALL), agents=1)
    await ledger.reserve(orgs[1].id, STANDARD, charge_for(SMALL), agents=1)
    got = await ledger.usage_of([orgs[1].id, "org_unknown"])
    assert set(got) == {orgs[1].id}  # an org with nothing recorded is absent
    whole = (await ledger.all_usage())[orgs[1].id]
    assert got[orgs[1].id].used == whole.used and whole.used["pods"].value == 2
    assert got[orgs[1].id].agents == 2
    assert await ledger.usage_of([]) == {}


async def test_watchers_are_told_of_each_charge_and_release_not_of_a_refusal(
    db: Database,
) -> None:
    org = await _org(db)
    ledger = QuotaLedger(db)
    told: list[str] = []
    ledger.watch(told.append)
    await ledger.reserve(org.id, STANDARD, charge_for(SMALL), agents=1)
    assert told == [org.id]
    await ledger.release(org.id, charge_for(SMALL), agents=1)
    assert told == [org.id, org.id]
    big = AdmittedResources(parse("40"), parse("40"), parse("1Gi"), parse("1Gi"))
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(org.id, STANDARD, charge_for(big))
    assert told == [org.id, org.id]  # nothing was charged
