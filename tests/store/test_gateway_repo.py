"""The gateway's store on every backend: a model change is written with its audit record,
metered calls sum exactly per group, task subtrees and credentials."""

from __future__ import annotations

from datetime import UTC, datetime

from corral.domain.ids import OrgId, OrgSlug
from corral.domain.models import MeteredCall, ModelEndpoint, Usage
from corral.domain.plans import STANDARD
from corral.domain.secrets import AuditAction, AuditEntry
from corral.domain.tenancy import Organization
from corral.store.db import Database
from corral.store.gateway_repo import GatewayStore
from corral.store.tenants import OrgRepository


def _entry(org: str, action: AuditAction) -> AuditEntry:
    return AuditEntry(OrgId(org), "admin", action, "small", True, datetime.now(UTC))


async def test_models_usage_and_credentials_round_trip(db: Database) -> None:
    org = Organization(OrgId("org_acme"), OrgSlug("acme"), STANDARD, datetime.now(UTC))
    await OrgRepository(db).create(org, key_id="kacme", key_secret="s")
    store = GatewayStore(db)
    model = ModelEndpoint(org.id, "small", "http://up/v1", "key", "up-1", 2, 8)
    stored, created = await store.put_model(
        model, audit=lambda prev: _entry(org.id, AuditAction.MODEL_DECLARE)
    )
    assert created and stored.upstream_model == "up-1"
    changed = ModelEndpoint(org.id, "small", "http://up2/v1", "key", "up-2", 3, 9)
    _, created = await store.put_model(
        changed, audit=lambda prev: _entry(org.id, AuditAction.MODEL_CHANGE)
    )
    assert not created
    assert [m.base_url for m in await store.list_models(org.id)] == ["http://up2/v1"]

    at = datetime(2026, 12, 5, tzinfo=UTC)
    calls = [
        MeteredCall(org.id, role, agent, task, "small", Usage(7, 5), 100, at)
        for role, agent, task in [("w", "a1", "t1"), ("w", "a2", "t2"), ("m", "a3", None)]
    ]
    await store.record_calls(calls)
    assert await store.period_totals("2026-12") == {org.id: (36, 300)}
    assert await store.tasks_total(["t1", "t2"]) == (24, 200)
    assert await store.role_total(org.id, "w", "2026-12") == (24, 200)
    assert await store.role_total(org.id, "w", "2026-11") == (0, 0)
    assert await store.role_total(org.id, "nobody", "2026-12") == (0, 0)
    by_role = await store.usage_by(org.id, group="role", period="2026-12")
    assert [(r["role"], r["calls"], r["cost"]) for r in by_role] == [("m", 1, 100), ("w", 2, 200)]

    await store.put_credential("a1", org.id, "h1")
    await store.put_credential("a1", org.id, "h2")
    assert await store.credential("h1") is None
    assert await store.credential("h2") == ("a1", org.id)
    assert await store.delete_model(org.id, "small", audit=_entry(org.id, AuditAction.MODEL_REMOVE))
    assert not await store.delete_model(
        org.id, "small", audit=_entry(org.id, AuditAction.MODEL_REMOVE)
    )
