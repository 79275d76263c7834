"""The audit log: every change and read recorded per org, and no org sees another's."""

from __future__ import annotations

import pytest

from corral.domain.errors import InvalidInput, PermissionDenied
from corral.domain.grants import SecretGrant
from corral.domain.secrets import AuditAction
from corral.vault.service import Vault
from tests.vault.conftest import ORG_A, ORG_B, SECRET_VALUE, make_agent

ADMIN = "apikey:key_a"


async def test_every_change_and_read_is_recorded_newest_first(vault: Vault) -> None:
    agent = make_agent(ORG_A, "reader")
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    grant = await vault.grants.add(ORG_A, SecretGrant("github-*", role="worker"), actor=ADMIN)
    await vault.read_for_agent(ORG_A, agent.identity, "github-token")
    with pytest.raises(PermissionDenied):
        await vault.read_for_agent(ORG_A, agent.identity, "slack-webhook")
    await vault.grants.remove(ORG_A, grant.id, actor=ADMIN)
    await vault.delete(ORG_A, "github-token", actor=ADMIN)

    records = await vault.audit.list(ORG_A)
    assert [(r.action, r.target, r.allowed) for r in records] == [
        ("secret.delete", "github-token", True),
        ("grant.remove", "github-*", True),
        ("secret.read", "slack-webhook", False),
        ("secret.read", "github-token", True),
        ("grant.add", "github-*", True),
        ("secret.put", "github-token", True),
        ("key.create", "data-key", True),
    ]
    assert [r.id for r in records] == sorted((r.id for r in records), reverse=True)
    assert {r.actor for r in records} == {ADMIN, f"agent:{agent.identity.agent_id}"}
    assert all(r.at.tzinfo is not None for r in records)


async def test_an_org_never_sees_another_orgs_records(vault: Vault) -> None:
    await vault.put(ORG_A, "github-token", SECRET_VALUE, actor=ADMIN)
    outsider = make_agent(ORG_B, "outsider")
    with pytest.raises(PermissionDenied):
        await vault.read_for_agent(ORG_A, outsider.identity, "github-token")
    assert await vault.audit.list(ORG_B) == []
    a_records = await vault.audit.list(ORG_A)
    assert a_records and all(r.org_id == ORG_A for r in a_records)
    assert a_records[0].detail == "denied: the agent belongs to another organization"
    a_ids = {r.id for r in a_records}
    assert not a_ids & {r.id for r in await vault.audit.list(ORG_B, before_id=max(a_ids) + 1)}


async def test_the_log_pages_with_before_id(vault: Vault) -> None:
    for i in range(5):
        await vault.put(ORG_A, f"secret-{i}", b"x", actor=ADMIN)
    first = await vault.audit.list(ORG_A, limit=2)
    second = await vault.audit.list(ORG_A, limit=2, before_id=first[-1].id)
    rest = await vault.audit.list(ORG_A, limit=100, before_id=second[-1].id)
    assert [r.target for r in first + second + rest] == [
        "secret-4",
        "secret-3",
        "secret-2",
        "secret-1",
        "secret-0",
        "data-key",
    ]


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_page_sizes_are_bounded(vault: Vault, limit: int) -> None:
    with pytest.raises(InvalidInput):
        await vault.audit.list(ORG_A, limit=limit)


async def test_claimed_strings_are_clipped_and_made_printable(vault: Vault) -> None:
    await vault.audit.record(
        ORG_A,
        actor="unverified-agent:" + "x" * 500,
        action=AuditAction.SECRET_READ,
        target="evil\nname\x00" + "y" * 500,
        allowed=False,
    )
    record = (await vault.audit.list(ORG_A, limit=1))[0]
    assert len(record.actor) == 160 and len(record.target) == 253
    assert "\n" not in record.target and "\x00" not in record.target
