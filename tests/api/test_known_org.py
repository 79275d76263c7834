"""The reconciler's org lookup answers from the dispatcher's book, the store only for an org
the book does not hold."""

from __future__ import annotations

import httpx
import pytest

from corral.control.platform import Platform
from corral.domain.errors import NotFound


async def test_an_org_is_known_without_a_read_and_an_unknown_one_is_not_found(
    admin: httpx.AsyncClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await admin.post("/v1/orgs", json={"name": "known", "plan": "free"})
    assert r.status_code == 201, r.text
    stored = platform.orgs.get_by_id
    reads: list[str] = []

    async def counted(org_id: str) -> object:
        reads.append(org_id)
        return await stored(org_id)

    monkeypatch.setattr(platform.orgs, "get_by_id", counted)
    org_id = r.json()["id"]
    org = await platform.known_org(org_id)
    assert (org.slug, org.plan.name) == ("known", "free") and reads == []
    r = await admin.patch("/v1/orgs/known", json={"plan": "standard"})
    assert r.status_code == 200, r.text
    assert (await platform.known_org(org_id)).plan.name == "standard"  # as it changed
    with pytest.raises(NotFound):
        await platform.known_org("org_nope")
    assert reads == ["org_nope"]  # the store, for what the book does not hold
    assert (await admin.delete("/v1/orgs/known")).status_code in (200, 202, 204)
    with pytest.raises(NotFound):
        await platform.known_org(org_id)
