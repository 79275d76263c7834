"""``SqlVaultStore`` on SQLite and PostgreSQL: conditional writes, org scoping, translation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from corral.domain.errors import Conflict, NotFound, Unavailable
from corral.domain.grants import SecretGrant
from corral.domain.ids import OrgId
from corral.domain.secrets import (
    AuditAction,
    AuditEntry,
    DataKeyRecord,
    GrantRecord,
    SecretInfo,
    SecretRecord,
)
from corral.store.db import Database
from corral.store.schema import AuditRow
from corral.store.vault_repo import SqlVaultStore
from corral.vault.keys import Keyring
from corral.vault.service import Vault
from tests.vault.conftest import ORG_A, ORG_B, SECRET_VALUE, make_agent

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def entry(org: OrgId = ORG_A, action: AuditAction = AuditAction.SECRET_PUT) -> AuditEntry:
    return AuditEntry(org, "tester", action, "target", True, NOW, "detail")


def secret(version: int, org: OrgId = ORG_A) -> SecretRecord:
    return SecretRecord(org, "github-token", version, b"\x01cipher", NOW, NOW)


async def audit_count(db: Database) -> int:
    async with db.sessions() as s:
        return len((await s.scalars(select(AuditRow))).all())


async def test_a_secret_write_is_conditional_on_the_version(db: Database) -> None:
    store = SqlVaultStore(db)
    assert await store.write_secret(secret(1), expected_version=0, audit=entry())
    assert not await store.write_secret(secret(1), expected_version=0, audit=entry())
    assert not await store.write_secret(secret(3), expected_version=2, audit=entry())
    assert await store.write_secret(secret(2), expected_version=1, audit=entry())
    stored = await store.get_secret(ORG_A, "github-token")
    assert stored is not None and stored.version == 2
    assert await audit_count(db) == 2  # only the writes that happened are recorded


async def test_times_come_back_timezone_aware(db: Database) -> None:
    store = SqlVaultStore(db)
    await store.write_secret(secret(1), expected_version=0, audit=entry())
    info = await store.get_secret_info(ORG_A, "github-token")
    assert info is not None and info.created_at == NOW and info.created_at.tzinfo is not None
    assert (await store.list_audit(ORG_A, limit=1))[0].at == NOW


async def test_writes_for_an_unknown_org_are_not_found(db: Database) -> None:
    store = SqlVaultStore(db)
    missing = OrgId("org_missing000")
    with pytest.raises(NotFound):
        await store.write_secret(secret(1, missing), expected_version=0, audit=entry(missing))
    with pytest.raises(NotFound):
        await store.create_data_key(DataKeyRecord(missing, b"k", "mk-x", NOW), audit=entry(missing))
    grant = GrantRecord("grant_x", missing, SecretGrant("x", role="worker"), NOW)
    with pytest.raises(NotFound):
        await store.add_grant(grant, audit=entry(missing))
    assert await audit_count(db) == 0


async def test_the_first_data_key_wins_a_race(db: Database) -> None:
    store = SqlVaultStore(db)
    first = DataKeyRecord(ORG_A, b"first", "mk-1", NOW)
    second = DataKeyRecord(ORG_A, b"second", "mk-1", NOW)
    assert await store.create_data_key(first, audit=entry()) == first
    assert (await store.create_data_key(second, audit=entry())).wrapped_key == b"first"
    assert await audit_count(db) == 1


async def test_a_rewrap_is_conditional_on_the_master_key_id(db: Database) -> None:
    store = SqlVaultStore(db)
    await store.create_data_key(DataKeyRecord(ORG_A, b"k1", "mk-1", NOW), audit=entry())
    new = DataKeyRecord(ORG_A, b"k2", "mk-2", NOW)
    assert not await store.replace_data_key(new, expected_master_key_id="mk-0", audit=entry())
    assert await store.replace_data_key(new, expected_master_key_id="mk-1", audit=entry())
    assert await store.get_data_key(ORG_A) == new


async def test_removing_a_grant_is_scoped_to_its_org(db: Database) -> None:
    store = SqlVaultStore(db)
    grant = GrantRecord("grant_a", ORG_A, SecretGrant("agent-ssh-*", agent="agent-1"), NOW)
    await store.add_grant(grant, audit=entry())
    assert not await store.remove_grant(ORG_B, "grant_a", audit=entry(ORG_B))
    assert await store.list_grants(ORG_A) == [grant]
    assert await store.remove_grant(ORG_A, "grant_a", audit=entry())


async def test_concurrent_puts_each_get_their_own_version(db: Database, keyring: Keyring) -> None:
    vault = Vault(SqlVaultStore(db), keyring)
    await vault.start()
    await vault.put(ORG_A, "github-token", b"v0", actor="a")
    results = await asyncio.gather(
        *(vault.put(ORG_A, "github-token", f"v{i}".encode(), actor="a") for i in range(1, 4)),
        return_exceptions=True,
    )
    assert all(isinstance(r, SecretInfo | Conflict) for r in results), results
    versions = sorted(r.version for r in results if isinstance(r, SecretInfo))
    assert versions == sorted(set(versions)) and versions  # no version written twice
    assert (await vault.info(ORG_A, "github-token")).version == 1 + len(versions)


async def test_two_vaults_on_one_database_share_secrets_and_keys(
    db: Database, keyring: Keyring
) -> None:
    first = Vault(SqlVaultStore(db), keyring)
    second = Vault(SqlVaultStore(db), keyring)
    await first.start()
    await second.start()
    await first.put(ORG_A, "github-token", SECRET_VALUE, actor="a")
    agent = make_agent(ORG_A, "reader")
    await second.grants.add(ORG_A, SecretGrant("github-token", role="worker"), actor="a")
    assert await second.read_for_agent(ORG_A, agent.identity, "github-token") == SECRET_VALUE


async def test_a_database_failure_is_unavailable_and_hides_parameters(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text("DROP TABLE vault_secrets"))
    store = SqlVaultStore(db)
    leaky = SecretRecord(ORG_A, "github-token", 1, b"\x01" + SECRET_VALUE, NOW, NOW)
    with pytest.raises(Unavailable, match="vault store unavailable while writing") as caught:
        await store.write_secret(leaky, expected_version=0, audit=entry())
    assert SECRET_VALUE.decode() not in str(caught.value)
    assert SECRET_VALUE.decode() not in str(caught.value.to_wire())
